/**
 * NCCL on the cuda backend with a communicator of ONE rank (skipped where there is no CUDA device or no
 * libnccl.so.2): the non-blocking join, then the real code path of every collective (all-reduce, all-gather,
 * reduce-scatter, send and receive to itself in one group), device to device, and training the fixture pair a few
 * steps with data parallelism through NCCL gives the weights of the plain cuda run. Two ranks need two GPUs (NCCL
 * refuses two ranks on one GPU: "invalid usage"): that is the next issue's measurement.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { loadNccl, ncclUniqueId, ncclVersionString } from '../../src/parallel/nccl/ncclLibrary.ts';
import { NcclCommunicator } from '../../src/parallel/nccl/ncclCommunicator.ts';
import { allReduceGradientBuckets } from '../../src/parallel/nccl/bucketedAllReduce.ts';
import { planGradientBuckets } from '../../src/parallel/nccl/gradientBucketPlan.ts';
import { groupCollectives } from '../../src/parallel/nccl/bootstrap.ts';
import { oneRankDataParallel } from '../helpers/oneRankDataParallel.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { distillInThisProcess } from '../../pipelines/distill.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

let skip: string | false = false;
try {
  await selectBackend('cuda', { log: null });
  if (tf.getBackend() !== 'cuda') throw new Error('the cuda backend did not start');
  const nccl = loadNccl();
  process.stderr.write(`NCCL ${ncclVersionString(nccl.version)}\n`);
} catch (e) {
  skip = `no CUDA device or no NCCL here: ${(e as Error).message.split('\n')[0]}`;
  process.stderr.write(`nccl tests skipped: ${skip}\n`);
}

const values = (t: tf.Tensor): number[] => Array.from(t.dataSync());

test('one-rank NCCL communicator: all-reduce, all-gather, reduce-scatter and send/receive to itself on the device', { skip }, async () => {
  const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'self');
  assert.match(comm.describe, /^NCCL \d+\.\d+\.\d+$/);
  const x = tf.tensor2d([
    [1.5, -2],
    [3, 4.25],
  ]);
  const n = tf.tensor1d([7, -3, 11], 'int32');
  const reduced = await comm.allReduceSum(x);
  const reducedInt = await comm.allReduceSum(n);
  const gathered = await comm.allGather(x);
  const scattered = await comm.reduceScatter(x);
  const [received] = await comm.exchange([{ peer: 0, tensor: x }], [{ peer: 0, shape: [2, 2] }]);
  await comm.synchronize(30_000);
  for (const t of [reduced, gathered, scattered, received]) {
    assert.equal(tf.engine().backendName, 'cuda');
    assert.deepEqual(t.shape, [2, 2]);
    assert.deepEqual(values(t), [1.5, -2, 3, 4.25]);
  }
  assert.equal(reducedInt.dtype, 'int32');
  assert.deepEqual(values(reducedInt), [7, -3, 11]);
  // The input is untouched (each collective writes a new tensor).
  assert.deepEqual(values(x), [1.5, -2, 3, 4.25]);
  tf.dispose([x, n, reduced, reducedInt, gathered, scattered, received]);
  comm.destroy();
  await assert.rejects(comm.allReduceSum(tf.zeros([1])), /destroyed/);
});

// The join used to run the blocking ncclCommInitRank on koffi's worker thread, which killed the process with SIGSEGV
// on the H200 (2026-12-04). Every join is now NCCL's non-blocking one (ncclCommInitRankConfig, blocking 0) polled
// from this thread: here it must keep the event loop turning and give a communicator whose every call (each may
// answer ncclInProgress) is waited out before the next.
test('the non-blocking join (as groups of several ranks make it) keeps the event loop turning and gives a working communicator', { skip }, async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'nonblocking', { timeoutMs: 60_000 });
  clearInterval(timer);
  process.stderr.write(`non-blocking join: ${ticks} timer ticks while NCCL joined\n`);
  const x = tf.tensor1d([1, 2, 3]);
  const outs: tf.Tensor[] = [];
  // Several calls in a row: NCCL refuses a call made before the previous one's state is ncclSuccess again.
  for (let i = 0; i < 5; i++) outs.push(await comm.allReduceSum(x));
  const [self] = await comm.exchange([{ peer: 0, tensor: x }], [{ peer: 0, shape: [3] }]);
  await comm.synchronize(30_000);
  for (const y of [...outs, self]) assert.deepEqual(values(y), [1, 2, 3]);
  tf.dispose([x, self, ...outs]);
  comm.destroy();
});

test('one-rank bootstrap on cuda picks NCCL; bucketed all-reduce keeps every gradient and sums the flag', { skip }, async () => {
  const [transport] = localTransports(1);
  const c = await groupCollectives(transport, [0], 'dp');
  assert.equal(c.kind, 'nccl', c.kind === 'ring' ? c.reason : '');
  if (c.kind !== 'nccl') return;
  const grads = new Map<string, tf.Tensor>([
    ['embed', tf.randomNormal([64, 8], 0, 1, 'float32', 1)],
    ['layer.0', tf.randomNormal([8, 8], 0, 1, 'float32', 2)],
    ['norm', tf.randomNormal([8], 0, 1, 'float32', 3)],
  ]);
  const before = new Map([...grads].map(([k, t]) => [k, values(t)]));
  const plan = planGradientBuckets(
    [...grads].map(([name, t]) => ({ name, size: t.size })),
    72 * 4,
  );
  assert.equal(plan.length, 2);
  const extras = await allReduceGradientBuckets(grads, c.comm, plan, [1, 0]);
  assert.deepEqual(extras, [1, 0]);
  for (const [k, t] of grads) assert.deepEqual(values(t), before.get(k), k);
  tf.dispose([...grads.values()]);
  c.comm.destroy();
});

// startAllReduceSum runs on a second stream: without the event that makes it wait for the compute stream it would read
// its input before the matmul that makes it has run (and without the compute stream's wait, the add after it would
// read the sum before it is written). Large enough that the matmul takes milliseconds.
test('a started all-reduce waits on its own stream for the kernels that made its input, and the compute stream waits for it', { skip }, async () => {
  const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'side');
  const a = tf.randomUniform([2048, 2048], -1, 1, 'float32', 5);
  const made: tf.Tensor[] = [];
  const pending = [];
  for (let i = 0; i < 4; i++) {
    made.push(tf.matMul(a, i % 2 ? a : tf.transpose(a)));
    pending.push(comm.startAllReduceSum(made[i]));
  }
  // A collective on the compute stream between them keeps its place in the group's order.
  const between = await comm.allReduceSum(made[0]);
  const sums: tf.Tensor[] = [];
  for (const p of pending) sums.push(await p.result());
  const plusOne = sums.map((s) => tf.add(s, 1));
  await comm.synchronize(30_000);
  for (let i = 0; i < 4; i++) {
    const want = await made[i].data();
    assert.equal(maxAbsDiff(await sums[i].data(), want), 0, `sum ${i}`);
    assert.equal(
      maxAbsDiff(
        await plusOne[i].data(),
        Float32Array.from(want, (v) => v + 1),
      ),
      0,
      `sum ${i} + 1`,
    );
  }
  assert.equal(maxAbsDiff(await between.data(), await made[0].data()), 0);
  tf.dispose([a, between, ...made, ...sums, ...plusOne]);
  comm.destroy();
});

function recipe(dir: string, name: string): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    backend: 'cuda',
    trainer: { maxSteps: 4, globalBatchSize: 2, microBatchSize: 1, saveInterval: 100, valCheckInterval: 100, limitValBatches: 1, logInterval: 1 },
  });
}

const weights = (dir: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(dir, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

test("training the fixture pair 4 steps with DP through a one-rank NCCL communicator gives the plain cuda run's weights", { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-nccl-'));
  const plain = await distillInThisProcess(recipe(dir, 'plain'), { log: null, progress: false });
  const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'dp');
  const lines: string[] = [];
  const dp = oneRankDataParallel(comm, { globalBatchSize: 2, microBatchSize: 1, log: (l) => lines.push(l) });
  const viaNccl = await distillInThisProcess(recipe(dir, 'nccl'), { log: null, progress: false }, dp);
  comm.destroy();
  assert.match(lines.join('\n'), /collectives of group dp \(1 rank\): NCCL \d/);
  // Steps 2 to 4 start their buckets during the backward pass, on the communicator's second stream.
  assert.match(lines.join('\n'), /gradient buckets are all-reduced during the backward pass from here on/);
  assert.deepEqual(
    viaNccl.steps.map((s) => s.step),
    plain.steps.map((s) => s.step),
  );
  for (let i = 0; i < plain.steps.length; i++) {
    assert.ok(Math.abs(viaNccl.steps[i].loss - plain.steps[i].loss) <= 1e-6, `loss at step ${plain.steps[i].step}`);
    assert.ok(Math.abs(viaNccl.steps[i].gradNorm - plain.steps[i].gradNorm) <= 1e-6, `grad norm at step ${plain.steps[i].step}`);
  }
  const a = weights(plain.studentDir);
  const b = weights(viaNccl.studentDir);
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [name, w] of a) assert.ok(maxAbsDiff(w, b.get(name)!) <= 1e-6, `${name} differs by ${maxAbsDiff(w, b.get(name)!)}`);
});
