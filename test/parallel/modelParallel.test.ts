/**
 * Issue #8, "Done when": under PP 2, TP 2, CP 2 and TP 2 × DP 2 (and a composed TP 2 × PP 2 × CP 2), 5 KD steps on
 * the fixture pair give the same losses and grad norms (≤ 1e-5 relative) and final weights (≤ 1e-4 absolute) as one
 * worker, and so the PyTorch trajectory and llama-student-after-5-steps too. Every rank runs in this process over
 * in-process transports (each message still an encoded frame), on the cpu backend.
 *
 * The AdamW state gathered on rank 0 (what a checkpoint saves) must match one worker's too.
 *
 * Also: the vocabulary-parallel CE term (kdRatio 0.5, temperature 2, labels from the whole vocabulary) under TP 2;
 * a GPT-2 student (fused c_attn, learned positions, biases, LayerNorm) under TP 2, PP 2 and CP 2; and a GPT-2
 * teacher (its head tied to its embedding, so the last stage holds a copy) under TP 2 × PP 2.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import type { AdamWState } from '../../src/optim/adamw.ts';
import { worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { loadShardedModel } from '../../src/parallel/modelParallel/shardedWeights.ts';
import type { StepResult } from '../../src/train/batch.ts';
import { expectedJson, fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixtureLoss, oneWorker, pairBatches, randomGpt2Checkpoint, underLayout, type LayoutRun, type ModelPair } from './modelParallelHarness.ts';

await selectBackend('cpu', { log: null });

const STEPS = 5;
const MICRO = 2;
const LOSS_REL = 1e-5;
const WEIGHT_ABS = 1e-4;

const layout = (l: Partial<ParallelLayout>): ParallelLayout => ({ tp: 1, cp: 1, dp: 1, pp: 1, ...l });
const nameOf = (l: ParallelLayout): string =>
  (['tp', 'pp', 'cp', 'dp'] as const)
    .filter((a) => l[a] > 1)
    .map((a) => `${a.toUpperCase()} ${l[a]}`)
    .join(' × ');

const rel = (a: number, b: number): number => Math.abs(a - b) / Math.abs(b);

/**
 * Per-step loss and grad norm within `tol` relative of the reference; `fields` (the KD and CE parts of the loss)
 * within `fieldTol`.
 */
function assertSteps(got: StepResult[], want: StepResult[], tol: number, what: string, fields: ('kdLoss' | 'ceLoss')[] = [], fieldTol = tol): void {
  assert.equal(got.length, want.length, `${what}: ${got.length} steps, want ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    assert.equal(got[i].step, want[i].step, `${what}: step numbering`);
    assert.equal(got[i].skipped, false, `${what} step ${i} skipped`);
    assert.equal(got[i].tokens, want[i].tokens, `${what} step ${i}: loss tokens`);
    const rl = rel(got[i].loss, want[i].loss);
    const rg = rel(got[i].gradNorm, want[i].gradNorm);
    assert.ok(rl <= tol, `${what} step ${i}: loss ${got[i].loss} vs ${want[i].loss} (rel ${rl.toExponential(2)})`);
    assert.ok(rg <= tol, `${what} step ${i}: grad_norm ${got[i].gradNorm} vs ${want[i].gradNorm} (rel ${rg.toExponential(2)})`);
    for (const f of fields) {
      const g = got[i][f];
      const w = want[i][f];
      assert.ok(g !== undefined && w !== undefined, `${what} step ${i}: ${f} missing (${g} vs ${w})`);
      assert.ok(rel(g, w) <= fieldTol, `${what} step ${i}: ${f} ${g} vs ${w} (rel ${rel(g, w).toExponential(2)})`);
    }
  }
}

/** Every tensor of `want` present in `got`, none extra, each within `tol` absolute. */
function assertWeights(got: Map<string, Float32Array>, want: Map<string, ArrayLike<number>>, tol: number, what: string): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${what}: tensor names`);
  for (const [name, w] of want) {
    const d = maxAbsDiff(got.get(name)!, w);
    assert.ok(d <= tol, `${what}: ${name} differs by ${d.toExponential(2)} (abs)`);
  }
}

/**
 * The gathered AdamW state (what a checkpoint saves) against the reference's: the step count, and each tensor's
 * moments within 1e-4 of that tensor's largest moment (m is about a gradient, v its square: no absolute scale fits
 * both; measured agreement is 1e-5 of the largest or better).
 */
function assertOptimizer(got: AdamWState, want: AdamWState, what: string): void {
  assert.equal(got.step, want.step, `${what}: optimizer step`);
  assert.deepEqual([...got.moments.keys()].sort(), [...want.moments.keys()].sort(), `${what}: optimizer tensors`);
  for (const [name, w] of want.moments) {
    const g = got.moments.get(name)!;
    for (const k of ['m', 'v'] as const) {
      const scale = w[k].reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      assert.ok(scale > 0, `${what}: ${name} ${k} is all zero`);
      const d = maxAbsDiff(g[k], w[k]);
      assert.ok(d <= 1e-4 * scale, `${what}: AdamW ${k} of ${name} differs by ${d.toExponential(2)} (largest ${scale.toExponential(2)})`);
    }
  }
}

/** Every rank reports the same step results: they all come out of one all-reduce. */
function assertRanksAgree(run: LayoutRun, l: ParallelLayout): void {
  assert.equal(run.perRank.length, worldSize(l));
  for (const [r, steps] of run.perRank.entries()) {
    for (const [i, s] of steps.entries()) {
      assert.equal(s.loss, run.steps[i].loss, `rank ${r} step ${i}: loss differs from rank 0's`);
      assert.equal(s.gradNorm, run.steps[i].gradNorm, `rank ${r} step ${i}: grad norm differs from rank 0's`);
      assert.equal(s.tokens, run.steps[i].tokens, `rank ${r} step ${i}: tokens differ from rank 0's`);
    }
  }
}

/** Runs `l`, checking that it leaves no tensor behind and that its ranks agree. */
async function runLayout(l: ParallelLayout, loss = fixtureLoss(), pair: ModelPair = {}): Promise<LayoutRun> {
  const before = tf.memory().numTensors;
  const run = await underLayout(l, STEPS, MICRO, loss, pair);
  assert.equal(tf.memory().numTensors, before, `${nameOf(l)}: tensors leaked`);
  assertRanksAgree(run, l);
  return run;
}

// ---- The fixture pair (llama-student ← llama-teacher) ----

let ref: LayoutRun;
before(async () => {
  const n = tf.memory().numTensors;
  ref = await oneWorker(STEPS, MICRO);
  assert.equal(tf.memory().numTensors, n, 'one worker: tensors leaked');
});

const pytorch = expectedJson().train;
const afterFive = readAllSafetensors(fixture('llama-student-after-5-steps', 'model.safetensors'));

for (const l of [layout({ pp: 2 }), layout({ tp: 2 }), layout({ cp: 2 }), layout({ tp: 2, dp: 2 }), layout({ tp: 2, pp: 2, cp: 2 })]) {
  test(`${nameOf(l)} (${worldSize(l)} workers): the fixture's 5 KD steps match one worker and PyTorch`, async () => {
    const run = await runLayout(l);
    assertSteps(run.steps, ref.steps, LOSS_REL, `${nameOf(l)} vs one worker`);
    assertWeights(run.weights, ref.weights, WEIGHT_ABS, `${nameOf(l)} vs one worker`);
    assertOptimizer(run.optimizer, ref.optimizer, `${nameOf(l)} vs one worker`);
    const torch = pytorch.trajectory.map((t, i): StepResult => ({ ...run.steps[i], loss: t.loss, gradNorm: t.grad_norm }));
    assertSteps(run.steps, torch, 1e-4, `${nameOf(l)} vs PyTorch`);
    assertWeights(run.weights, new Map([...afterFive].map(([n, t]) => [n, t.data])), WEIGHT_ABS, `${nameOf(l)} vs llama-student-after-5-steps`);
  });
}

test('TP 2 with a CE term (kdRatio 0.5, temperature 2, next-token labels): the vocabulary-parallel loss matches one worker', async () => {
  const pair: ModelPair = { nextTokenLabels: true };
  // The labels must live on both TP ranks' vocabulary halves (rows [0, 500) and [500, 1000)), at counted positions.
  const batches = pairBatches(1, 1, pair);
  const labels = batches[0].labels.dataSync();
  const mask = batches[0].lossMask.dataSync();
  const counted = [...labels].filter((_, i) => mask[i] > 0);
  for (const b of batches) {
    b.inputIds.dispose();
    b.labels.dispose();
    b.lossMask.dispose();
  }
  assert.ok(counted.some((x) => x < 500) && counted.some((x) => x >= 500), `labels ${counted.join(' ')} do not span both vocabulary halves`);

  const loss = fixtureLoss({ kdRatio: 0.5, temperature: 2 });
  const want = await oneWorker(STEPS, MICRO, loss, pair);
  assert.ok(want.steps[0].ceLoss !== undefined && want.steps[0].ceLoss > 1, `one worker reports a CE term (${want.steps[0].ceLoss})`);
  const run = await runLayout(layout({ tp: 2 }), loss, pair);
  // The KD part alone is a small KL at T 2 (about 0.005) summed from terms of both signs over 1000 ids, split
  // differently over the vocabulary: its float32 cancellation reaches 1e-5 relative (5e-8 absolute), hence 1e-4.
  assertSteps(run.steps, want.steps, LOSS_REL, 'TP 2, kdRatio 0.5, T 2', ['kdLoss', 'ceLoss'], 1e-4);
  assertWeights(run.weights, want.weights, WEIGHT_ABS, 'TP 2, kdRatio 0.5, T 2');
  assertOptimizer(run.optimizer, want.optimizer, 'TP 2, kdRatio 0.5, T 2');
});

// ---- A GPT-2 student (4 heads, n_embd 48, vocab 1000, 2 layers, random weights) ← llama-teacher ----

const gpt2: ModelPair = {
  student: randomGpt2Checkpoint({ nEmbd: 48, nHead: 4, nLayer: 2, vocab: 1000, seed: 7 }),
  // Its gradient norm is about 0.2. AdamW hardly sees a gradient's scale, so clipping at, say, 0.1 would change
  // the trajectory by 2e-5 only; clipped to a norm of 1e-5 the gradients (≈3e-8 an element) are comparable to
  // AdamW's eps, and a missing or wrong clip moves the step-4 loss by 10%.
  clipGrad: 1e-5,
};
let gpt2Ref: LayoutRun | null = null;
async function gpt2Reference(): Promise<LayoutRun> {
  if (!gpt2Ref) {
    gpt2Ref = await oneWorker(STEPS, MICRO, fixtureLoss(), gpt2);
    assert.ok(
      gpt2Ref.steps.every((s) => s.gradNorm > 1e-3),
      `GPT-2 grad norms ${gpt2Ref.steps.map((s) => s.gradNorm)} are not all clipped`,
    );
  }
  return gpt2Ref;
}

test('the GPT-2 student is really split under TP 2: fused c_attn columns, vocabulary rows, c_fc columns', () => {
  const m = loadShardedModel(gpt2.student!, layout({ tp: 2 }), 1, true);
  try {
    assert.deepEqual(m.params.get('transformer.h.0.attn.c_attn.weight')!.shape, [48, 72]);
    assert.deepEqual(m.params.get('transformer.h.0.attn.c_attn.bias')!.shape, [72]);
    assert.deepEqual(m.params.get('transformer.wte.weight')!.shape, [500, 48]);
    assert.deepEqual(m.params.get('transformer.wpe.weight')!.shape, [64, 48]);
    assert.deepEqual(m.params.get('transformer.h.1.mlp.c_fc.weight')!.shape, [48, 96]);
    assert.deepEqual(m.params.get('transformer.h.1.mlp.c_proj.weight')!.shape, [96, 48]);
  } finally {
    for (const v of m.params.values()) v.dispose();
  }
});

for (const l of [layout({ tp: 2 }), layout({ pp: 2 }), layout({ cp: 2 })]) {
  test(`GPT-2 student under ${nameOf(l)}: 5 KD steps (clipped) match one worker`, async () => {
    const want = await gpt2Reference();
    const run = await runLayout(l, fixtureLoss(), gpt2);
    assertSteps(run.steps, want.steps, LOSS_REL, `GPT-2 ${nameOf(l)}`);
    assertWeights(run.weights, want.weights, WEIGHT_ABS, `GPT-2 ${nameOf(l)}`);
    assertOptimizer(run.optimizer, want.optimizer, `GPT-2 ${nameOf(l)}`);
  });
}

test('llama-student ← a GPT-2 teacher under TP 2 × PP 2: the tied teacher head on the last stage, split over the vocabulary', async () => {
  const pair: ModelPair = { teacher: randomGpt2Checkpoint({ nEmbd: 64, nHead: 4, nLayer: 2, vocab: 1000, seed: 11 }) };
  const want = await oneWorker(STEPS, MICRO, fixtureLoss(), pair);
  const l = layout({ tp: 2, pp: 2 });
  const run = await runLayout(l, fixtureLoss(), pair);
  assertSteps(run.steps, want.steps, LOSS_REL, `GPT-2 teacher ${nameOf(l)}`);
  assertWeights(run.weights, want.weights, WEIGHT_ABS, `GPT-2 teacher ${nameOf(l)}`);
  assertOptimizer(run.optimizer, want.optimizer, `GPT-2 teacher ${nameOf(l)}`);
});
