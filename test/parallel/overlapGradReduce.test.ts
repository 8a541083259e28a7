/**
 * The gradient all-reduce started during the backward pass (--overlap_grad_reduce; nccl/bucketedAllReduce.ts's
 * BucketedGradientReduction fed by the student's gradient hooks), on CPU with the in-process fake communicator:
 * buckets start in the plan's order whatever order their gradients come in, each as soon as it and those before it
 * are whole; in a real backward pass of the fixture student the first bucket starts before the embedding's gradient
 * is final, and the sums equal the ranks' plain gradients summed; a rank that fails ends the others' step with an
 * error naming it, freeing what was started; and a training run through a communicator takes this path from its
 * second step (and not with the flag off) with the plain run's weights.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { planGradientBuckets } from '../../src/parallel/nccl/gradientBucketPlan.ts';
import { BucketedGradientReduction } from '../../src/parallel/nccl/bucketedAllReduce.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import { CollectiveError, type Communicator } from '../../src/parallel/nccl/communicator.ts';
import { oneRankDataParallel } from '../helpers/oneRankDataParallel.ts';
import { distillInThisProcess } from '../../pipelines/distill.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

await tf.setBackend('cpu');

/** A communicator that writes each start into `log` (with its element count) before passing it on. */
function logged(inner: Communicator, log: string[]): Communicator {
  return Object.assign(Object.create(inner) as Communicator, {
    startAllReduceSum: (t: tf.Tensor) => {
      log.push(`start ${t.size}`);
      return inner.startAllReduceSum(t);
    },
  });
}

const PARAMS = [
  { name: 'embed', size: 8 },
  { name: 'l0.q', size: 4 },
  { name: 'l0.up', size: 6 },
  { name: 'l1.q', size: 4 },
  { name: 'l1.up', size: 6 },
  { name: 'norm', size: 2 },
];
const grad = (rank: number, i: number, size: number): tf.Tensor => tf.tensor1d(Float32Array.from({ length: size }, (_, j) => (rank + 1) * 10 + i + j / 8));

test("buckets start in the plan's order whatever order their gradients come in, each once it and those before it are whole", async () => {
  // 10 elements a bucket: [norm, l1.up], [l1.q, l0.up], [l0.q], [embed].
  const plan = planGradientBuckets(PARAMS, 10 * 4);
  assert.deepEqual(
    plan.map((b) => b.entries.map((e) => e.name)),
    [['norm', 'l1.up'], ['l1.q', 'l0.up'], ['l0.q'], ['embed']],
  );
  const group = new FakeCommunicatorGroup(2);
  const logs: string[][] = [[], []];
  const grads = [0, 1].map((r) => new Map(PARAMS.map((p, i) => [p.name, grad(r, i, p.size)])));
  const reductions = [0, 1].map((r) => new BucketedGradientReduction(logged(group.members[r], logs[r]), plan, () => [r + 1]));
  // Bucket 1 is whole before bucket 0; bucket 3 (embed) never comes through a hook: finish starts it.
  for (const [r, red] of reductions.entries()) {
    for (const name of ['l1.q', 'l0.up', 'norm', 'l1.up', 'l0.q']) {
      logs[r].push(`ready ${name}`);
      red.ready(name, grads[r].get(name)!);
    }
  }
  for (const log of logs)
    assert.deepEqual(log, [
      'ready l1.q',
      'ready l0.up',
      'ready norm',
      'ready l1.up',
      'start 8', // bucket 0, whole at last
      'start 10', // bucket 1, whole since l0.up, in turn
      'ready l0.q',
      'start 4',
    ]);
  const want = PARAMS.map((p, i) => tf.add(grad(0, i, p.size), grad(1, i, p.size)));
  const extras = await Promise.all(reductions.map((red, r) => red.finish(grads[r])));
  assert.deepEqual(extras, [[3], [3]], 'the extras rode in the last bucket, summed');
  for (const [r, g] of grads.entries()) {
    assert.deepEqual(
      [...g.keys()],
      PARAMS.map((p) => p.name),
      'keys and order kept',
    );
    PARAMS.forEach((p, i) => assert.equal(maxAbsDiff(g.get(p.name)!.dataSync(), want[i].dataSync()), 0, `rank ${r}: ${p.name}`));
    assert.equal(logs[r].at(-1), 'start 9', 'embed (8) and the flag (1) started by finish');
  }
  for (const g of grads) tf.dispose([...g.values()]);
  tf.dispose(want);
});

test("in a real backward pass the first bucket starts before the embedding's gradient is final, and the sums are the ranks' gradients summed", async () => {
  const ids = readAllSafetensors(fixture('llama-student', 'expected.safetensors')).get('input_ids')!;
  const [b, t] = ids.shape;
  const models = await Promise.all([0, 1].map(() => loadModel(fixture('llama-student'), { trainable: true })));
  // Rank r sees its own batch: the ids shifted by r.
  const inputs = [0, 1].map((r) =>
    tf.tensor2d(
      Int32Array.from(ids.data as Int32Array, (x) => (x + r) % models[0].config.vocabSize),
      [b, t],
      'int32',
    ),
  );
  const loss = (r: number) => (): tf.Scalar => tf.tidy(() => tf.mean(tf.square(models[r].logits(inputs[r]))) as tf.Scalar);
  const plain = [0, 1].map((r) => tf.variableGrads(loss(r), models[r].trainableVariables()));
  const params = [...models[0].params].map(([name, v]) => ({ name, size: v.size }));
  const plan = planGradientBuckets(params, 16 << 10);
  assert.ok(plan.length >= 4, `several buckets (${plan.length})`);

  const group = new FakeCommunicatorGroup(2);
  const logs: string[][] = [[], []];
  const maps: Map<string, tf.Tensor>[] = [];
  const reductions = [0, 1].map((r) => new BucketedGradientReduction(logged(group.members[r], logs[r]), plan, () => [0]));
  for (const r of [0, 1]) {
    const held = new Map<string, tf.Tensor>();
    const { value, grads } = models[r].withGradientHooks!(
      (name, g) => {
        logs[r].push(`ready ${name}`);
        // As backward does: a kept tensor of the step's own, alive until the step ends.
        held.set(name, tf.keep(tf.clone(g)));
        reductions[r].ready(name, held.get(name)!);
      },
      () => tf.variableGrads(loss(r), models[r].trainableVariables()),
    );
    tf.dispose([value, ...Object.values(grads)]);
    maps.push(new Map(params.map((p) => [p.name, held.get(p.name)!])));
  }
  for (const log of logs) {
    const firstStart = log.findIndex((l) => l.startsWith('start'));
    assert.ok(firstStart >= 0 && firstStart < log.indexOf('ready model.embed_tokens.weight'), `a bucket started during the pass:\n${log.join('\n')}`);
    assert.equal(log.filter((l) => l.startsWith('start')).length, plan.length, 'every bucket started during the pass');
  }
  await Promise.all(reductions.map((red, r) => red.finish(maps[r])));
  for (const p of params) {
    const v = (r: number): tf.Tensor => plain[r].grads[models[r].params.get(p.name)!.name];
    const want = tf.add(v(0), v(1));
    for (const r of [0, 1]) assert.equal(maxAbsDiff(maps[r].get(p.name)!.dataSync(), want.dataSync()), 0, `rank ${r}: ${p.name}`);
    want.dispose();
  }
  for (const m of maps) tf.dispose([...m.values()]);
  for (const g of plain) tf.dispose([g.value, ...Object.values(g.grads)]);
  tf.dispose(inputs);
  for (const m of models) m.dispose();
});

test("a rank that fails after the others' buckets started ends their step with an error naming it, and frees what was started", async () => {
  const plan = planGradientBuckets(PARAMS, 10 * 4);
  const group = new FakeCommunicatorGroup(3, 5000);
  const grads = [0, 1, 2].map((r) => new Map(PARAMS.map((p, i) => [p.name, grad(r, i, p.size)])));
  const before = tf.memory().numTensors;
  const runs = [0, 2].map((r) => {
    const red = new BucketedGradientReduction(group.members[r], plan, () => [0]);
    for (const name of ['norm', 'l1.up', 'l1.q', 'l0.up']) red.ready(name, grads[r].get(name)!);
    return red.finish(grads[r]);
  });
  setTimeout(() => group.members[1].abort(new Error('out of device memory')), 20);
  for (const p of runs)
    await assert.rejects(
      p,
      (e: unknown) => e instanceof CollectiveError && e.ranks.includes(1) && /rank 1 of the group failed: out of device memory/.test(e.message),
    );
  assert.equal(tf.memory().numTensors, before, 'the flat buckets were freed');
  for (const g of grads) tf.dispose([...g.values()]);
});

test('training through a communicator starts the all-reduce in the backward pass from step 2, with the weights of the plain run and of the flag off', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-overlap-'));
  const recipe = (name: string, overlapGradReduce?: boolean) =>
    fixturePairRecipe({
      name,
      dir,
      // Two micro-batches a step: the hook sums the first in.
      trainer: { maxSteps: 3, globalBatchSize: 4, microBatchSize: 2, saveInterval: 100, valCheckInterval: 100, limitValBatches: 1, logInterval: 1 },
      parallel: { numNodes: 1, devicesPerNode: 1, tpSize: 1, ppSize: 1, cpSize: 1, overlapGradReduce },
    });
  const viaComm = async (overlap: boolean) => {
    const group = new FakeCommunicatorGroup(1);
    const log: string[] = [];
    const lines: string[] = [];
    const dp = oneRankDataParallel(logged(group.members[0], log), {
      globalBatchSize: 4,
      microBatchSize: 2,
      bucketBytes: 64 << 10,
      log: (l) => lines.push(l),
      overlapGradReduce: overlap,
    });
    const result = await distillInThisProcess(recipe(overlap ? 'overlap' : 'after', overlap), { log: null, progress: false }, dp);
    return { result, starts: log.length, lines };
  };
  const plain = await distillInThisProcess(recipe('plain'), { log: null, progress: false });
  const on = await viaComm(true);
  const off = await viaComm(false);
  assert.ok(
    on.lines.some((l) => /gradient buckets are all-reduced during the backward pass from here on/.test(l)),
    on.lines.join('\n'),
  );
  assert.ok(!off.lines.some((l) => /during the backward pass/.test(l)), 'the flag off keeps the reduction after the backward pass');
  assert.equal(on.starts, off.starts, 'the same buckets either way');
  const w = (d: string): Map<string, Float32Array> =>
    new Map([...readAllSafetensors(join(d, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));
  const [a, b, c] = [w(plain.studentDir), w(on.result.studentDir), w(off.result.studentDir)];
  for (const [name, x] of a) {
    assert.equal(maxAbsDiff(x, b.get(name)!), 0, `${name}: overlapped vs plain`);
    assert.equal(maxAbsDiff(x, c.get(name)!), 0, `${name}: after the backward vs plain`);
  }
  assert.deepEqual(
    on.result.steps.map((s) => [s.step, s.loss, s.gradNorm]),
    plain.steps.map((s) => [s.step, s.loss, s.gradNorm]),
  );
  rmSync(dir, { recursive: true, force: true });
});
