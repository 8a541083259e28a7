/**
 * NCCL between two ranks on two GPUs (skipped with fewer than two CUDA devices; the device machine of one H200
 * cannot run it: NCCL refuses two ranks on one GPU). Two child processes, one per GPU (CUDA_VISIBLE_DEVICES), join
 * one communicator and check every collective against the sums they expect, send/receive both ways in one group
 * included; then `--devices 2 --backend cuda` (DP 2 through NCCL, workers pinned one GPU each) gives the losses and
 * weights of `--devices 1`.
 *
 * This file is also the child: started with DISTILL_NCCL_CHILD=<rank>, it runs one rank and prints its results.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import type { CudaBackend } from '../../src/backend/cuda/backend.ts';
import { loadNccl, ncclUniqueId } from '../../src/parallel/nccl/ncclLibrary.ts';
import { NcclCommunicator } from '../../src/parallel/nccl/ncclCommunicator.ts';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { deviceEnv } from '../../src/parallel/placement.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

const child = process.env.DISTILL_NCCL_CHILD;

/** One rank of the pair: every collective, results as JSON on stdout. */
async function childRank(rank: number, id: Uint8Array): Promise<void> {
  await selectBackend('cuda', { log: null });
  const comm = await NcclCommunicator.join(id, 2, rank, 'pair', { timeoutMs: 120_000 });
  const x = tf.tensor2d([
    [rank + 1, 10 * (rank + 1)],
    [100 * (rank + 1), -(rank + 1)],
  ]);
  const sum = await comm.allReduceSum(x);
  const gathered = await comm.allGather(x);
  const scattered = await comm.reduceScatter(x);
  const [fromPeer] = await comm.exchange([{ peer: 1 - rank, tensor: x }], [{ peer: 1 - rank, shape: [2, 2] }]);
  await comm.synchronize(120_000);
  const out = {
    sum: Array.from(sum.dataSync()),
    gathered: Array.from(gathered.dataSync()),
    gatheredShape: gathered.shape,
    scattered: Array.from(scattered.dataSync()),
    fromPeer: Array.from(fromPeer.dataSync()),
  };
  comm.destroy();
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
}

if (child !== undefined) {
  await childRank(Number(child), Uint8Array.from(Buffer.from(process.env.DISTILL_NCCL_ID ?? '', 'hex')));
  process.exit(0);
}

let skip: string | false = false;
try {
  await selectBackend('cuda', { log: null });
  loadNccl();
  const count = [0];
  (tf.backend() as CudaBackend).driver.fn.cuDeviceGetCount(count);
  if (count[0] < 2) skip = `${count[0]} CUDA device(s) here; two ranks need two GPUs`;
} catch (e) {
  skip = `no CUDA device or no NCCL here: ${(e as Error).message.split('\n')[0]}`;
}
if (skip) process.stderr.write(`two-GPU NCCL tests skipped: ${skip}\n`);

function startRank(rank: number, idHex: string): Promise<Record<string, number[]>> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, ...deviceEnv('cuda', rank), DISTILL_NCCL_CHILD: String(rank), DISTILL_NCCL_ID: idHex },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 180_000);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code === 0 && line) resolve(JSON.parse(line.slice(7)) as Record<string, number[]>);
      else reject(new Error(`rank ${rank} exited with ${code}: ${err.slice(-2000)}`));
    });
  });
}

test('two ranks on two GPUs: all-reduce, all-gather, reduce-scatter and send/receive both ways in one group', { skip }, async () => {
  // This process holds the id's bootstrap root while the two ranks join.
  const idHex = Buffer.from(ncclUniqueId()).toString('hex');
  const [r0, r1] = await Promise.all([startRank(0, idHex), startRank(1, idHex)]);
  const x = (r: number): number[] => [r + 1, 10 * (r + 1), 100 * (r + 1), -(r + 1)];
  const sum = x(0).map((v, i) => v + x(1)[i]);
  for (const r of [r0, r1]) {
    assert.deepEqual(r.sum, sum);
    assert.deepEqual(r.gathered, [...x(0), ...x(1)]);
    assert.deepEqual(r.gatheredShape, [4, 2]);
  }
  assert.deepEqual(r0.scattered, sum.slice(0, 2));
  assert.deepEqual(r1.scattered, sum.slice(2));
  assert.deepEqual(r0.fromPeer, x(1));
  assert.deepEqual(r1.fromPeer, x(0));
});

function recipe(dir: string, name: string, devices: number): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    backend: 'cuda',
    trainer: { maxSteps: 4, globalBatchSize: 2, microBatchSize: 1, saveInterval: 100, valCheckInterval: 100, limitValBatches: 1, logInterval: 1 },
    parallel: { devicesPerNode: devices },
  });
}

test('--devices 2 --backend cuda (DP 2 through NCCL) gives the losses and weights of --devices 1', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-nccl2-'));
  const lines: string[] = [];
  const one = await run(recipe(dir, 'one', 1), { log: null });
  const two = await run(recipe(dir, 'two', 2), { log: (l) => lines.push(l) });
  assert.deepEqual(
    two.steps.map((s) => s.step),
    one.steps.map((s) => s.step),
  );
  for (let i = 0; i < one.steps.length; i++) {
    assert.ok(Math.abs(two.steps[i].loss - one.steps[i].loss) <= 1e-5, `loss at step ${one.steps[i].step}: ${two.steps[i].loss} vs ${one.steps[i].loss}`);
    assert.ok(Math.abs(two.steps[i].gradNorm - one.steps[i].gradNorm) <= 1e-5, `grad norm at step ${one.steps[i].step}`);
  }
  const w = (d: string): Map<string, Float32Array> =>
    new Map([...readAllSafetensors(join(d, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));
  const [a, b] = [w(one.studentDir), w(two.studentDir)];
  for (const [name, v] of a) assert.ok(maxAbsDiff(v, b.get(name)!) <= 1e-5, `${name} differs by ${maxAbsDiff(v, b.get(name)!)}`);
  // Once workerProgram passes its log to DataParallelRank, this line says NCCL carried the gradients.
  if (lines.some((l) => /collectives of group dp/.test(l)))
    assert.ok(
      lines.some((l) => /collectives of group dp \(2 ranks\): NCCL \d/.test(l)),
      lines.join('\n'),
    );
});
