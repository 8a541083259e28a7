/**
 * Issue #24, "Done when": tensor parallelism for a vocabulary that does not split over the TP ranks. The fixture
 * pair cut to 999 ids (embedding and head rows [0, 999)) runs 3 KD steps under TP 2, TP 2 × PP 2 and TP 2 × DP 2,
 * each with another --make_vocab_size_divisible_by (so the rows are cut three ways: 512 + 487 + 25 padding, 500 +
 * 499 + 1, 504 + 491 + 9), for every divergence, with and without the CE term, at τ 1 and 2, against one worker:
 * losses and grad norms (≤ 1e-5 relative, which also catches a gradient tp× too large: AdamW hardly sees a
 * gradient's scale), final weights (≤ 1e-4 absolute) and the gathered AdamW moments, in the model's own 999 rows.
 * The padding rows stay exactly zero on every rank, weight and moments. A GPT-2 student with 999 ids (tied wte,
 * whose copy on the last stage is padded too) does the same under TP 2 × PP 2.
 *
 * Then pairs whose vocabularies differ by padding (as Qwen's 151,936 and 152,064): each side's extra rows hold
 * random values that the KD must not read, as on one worker, which also logs the same alignment line; and the saved
 * student keeps its own vocabulary and resumes under another padding and on one worker.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { recipeFromFlags } from '../../src/cli/runFlags.ts';
import { distillationRecipe } from '../../src/recipe/config.ts';
import { checkModelParallelRecipe } from '../../src/recipe/validateLayout.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import type { KdLossKind } from '../../src/losses/types.ts';
import { sharedVocab } from '../../src/losses/vocabAlignment.ts';
import { worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { loadShardedModel, loadShardedOptimizerState, loadShardedPair } from '../../src/parallel/modelParallel/shardedWeights.ts';
import { vocabParallelLossOp } from '../../src/parallel/modelParallel/vocabParallelLoss.ts';
import { pairedVocabSize, paddedVocabSize, vocabShard } from '../../src/parallel/modelParallel/vocabPadding.ts';
import { latestCheckpoint } from '../../src/train/trainingCheckpoint.ts';
import { fixture } from '../helpers/fixtures.ts';
import { scratchDir } from '../model/checkpointVariant.ts';
import { llamaWithVocab } from './llamaWithVocab.ts';
import {
  assertOptimizer,
  assertSteps,
  assertWeights,
  fixtureLoss,
  oneWorker,
  randomGpt2Checkpoint,
  underLayout,
  type LayoutRun,
  type ModelPair,
} from './modelParallelHarness.ts';

await selectBackend('cpu', { log: null });

const STEPS = 2;
const MICRO = 2;
const LOSS_REL = 1e-5;
// The KD and CE parts alone: a small KL summed from terms of both signs, split differently (as modelParallel.test.ts).
const PART_REL = 1e-4;
const WEIGHT_ABS = 1e-4;

const layout = (l: Partial<ParallelLayout>): ParallelLayout => ({ tp: 1, cp: 1, dp: 1, pp: 1, ...l });
const nameOf = (l: ParallelLayout): string =>
  (['tp', 'pp', 'cp', 'dp'] as const)
    .filter((a) => l[a] > 1)
    .map((a) => `${a.toUpperCase()} ${l[a]}`)
    .join(' × ');

/** Runs `l` and checks what every layout run must: no leaked tensor, every rank the same results, padding all zero. */
async function runLayout(l: ParallelLayout, loss = fixtureLoss(), pair: ModelPair = {}, wantPadding = true): Promise<LayoutRun> {
  const before = tf.memory().numTensors;
  const run = await underLayout(l, STEPS, MICRO, loss, pair);
  assert.equal(tf.memory().numTensors, before, `${nameOf(l)}: tensors leaked`);
  assert.equal(run.perRank.length, worldSize(l));
  for (const [r, steps] of run.perRank.entries()) {
    for (const [i, s] of steps.entries())
      assert.deepEqual(
        [s.loss, s.gradNorm, s.tokens],
        [run.steps[i].loss, run.steps[i].gradNorm, run.steps[i].tokens],
        `rank ${r} step ${i} differs from rank 0`,
      );
  }
  if (wantPadding) assert.ok(run.padding.length > 0, `${nameOf(l)}: no rank holds padding rows; the test does not test padding`);
  for (const p of run.padding)
    assert.equal(p.largest, 0, `${nameOf(l)}: rank ${p.rank}'s ${p.rows} padding rows of ${p.name} moved to ${p.largest} (weight or AdamW moment)`);
  return run;
}

test("padding arithmetic: Megatron's multiple of divisor × tp, one cut of the rows, one size for a teacher and its student", () => {
  assert.equal(paddedVocabSize(50257, 1), 50257, 'nothing to split, nothing padded');
  assert.equal(paddedVocabSize(50257, 2), 50432); // ceil(50257 / 256) · 256
  assert.equal(paddedVocabSize(50257, 8, 64), 50688);
  assert.equal(paddedVocabSize(151936, 2), 152064);
  assert.equal(paddedVocabSize(999, 2, 1), 1000);
  assert.deepEqual(
    [0, 1].map((r) => vocabShard(999, 1024, 2, r)),
    [
      { vocabSize: 999, paddedSize: 1024, first: 0, rows: 512, valid: 512 },
      { vocabSize: 999, paddedSize: 1024, first: 512, rows: 512, valid: 487 },
    ],
  );
  // A rank may hold only padding (a tiny vocabulary over many ranks): it still holds its rows.
  assert.deepEqual(vocabShard(100, 256, 2, 1), { vocabSize: 100, paddedSize: 256, first: 128, rows: 128, valid: 0 });
  assert.equal(pairedVocabSize([151936, 152064], 2), 152064);
  assert.equal(pairedVocabSize([151665, 152064], 2), 152064, 'the exact tokenizer size pads to 151,808 alone, so the pair takes the larger');
  assert.throws(() => paddedVocabSize(999, 2, 0), /--make_vocab_size_divisible_by 0 must be a positive integer/);
  assert.throws(() => vocabShard(999, 999, 2, 0), /cannot be padded to 999 rows over --tp_size 2/);
});

test('a teacher and a student padded to different sizes (loaded each alone) are refused, saying how to load them', async () => {
  const [t0] = localTransports(2);
  const w = tf.zeros([500, 4]);
  const teacherHead = tf.zeros([501, 4]) as tf.Tensor2D;
  const op = vocabParallelLossOp(
    { hidden: 'h', teacherHidden: 'ht', labels: 'labels', mask: 'mask', head: 'w', outputs: ['loss', 'kd', 'ce'] },
    {
      options: fixtureLoss(),
      kdRatio: 1,
      coll: new Collectives(t0),
      tpGroup: [0, 1],
      teacherHead,
      globalTokens: () => 2,
      vocab: { student: vocabShard(999, 1000, 2, 0), teacher: vocabShard(1002, 1002, 2, 0) },
    },
  );
  const inputs = [tf.zeros([2, 4]), tf.zeros([2, 4]), tf.zeros([2], 'int32'), tf.ones([2])];
  try {
    await assert.rejects(op.forward(inputs, [w]), /teacher's vocabulary \(1002\) is padded to 1002 rows and the student's \(999\) to 1000.*loadShardedPair/);
  } finally {
    for (const t of [w, teacherHead, ...inputs]) t.dispose();
  }
});

// ---- The fixture pair with 999 ids ----

const odd: ModelPair = { student: llamaWithVocab('llama-student', 999, 1), teacher: llamaWithVocab('llama-teacher', 999, 2) };

test("the 999-id student under TP 2 (divisor 128): rank 1 holds 487 of its rows and 25 zero rows, from the file's rows [512, 999)", async () => {
  const m = loadShardedModel(odd.student!, layout({ tp: 2 }), 1, true, { paddedVocab: pairedVocabSize([999], 2, 128) });
  try {
    const w = m.params.get('model.embed_tokens.weight')!;
    assert.deepEqual(w.shape, [512, 32]);
    const local = (await w.data()) as Float32Array;
    const full = await loadModel(odd.student!, { trainable: false }).then(async (f) => {
      const d = (await f.params.get('model.embed_tokens.weight')!.data()) as Float32Array;
      f.dispose();
      return d;
    });
    assert.deepEqual(local.subarray(0, 487 * 32), full.subarray(512 * 32, 999 * 32));
    assert.ok(
      local.subarray(487 * 32).every((x) => x === 0),
      'padding rows are zero',
    );
  } finally {
    for (const v of m.params.values()) v.dispose();
  }
});

/** Each divergence, two of them mixed with the CE (next-token labels from the whole vocabulary), at τ 1 and 2. */
const losses: { kind: KdLossKind; kdRatio: number; temperature: number }[] = [
  { kind: 'forward_kl', kdRatio: 1, temperature: 1 },
  { kind: 'reverse_kl', kdRatio: 0.5, temperature: 2 },
  { kind: 'jsd', kdRatio: 1, temperature: 2 },
  { kind: 'skew_kl', kdRatio: 0.5, temperature: 1 },
];
const layouts: [ParallelLayout, number][] = [
  [layout({ tp: 2 }), 128],
  [layout({ tp: 2, pp: 2 }), 1],
  [layout({ tp: 2, dp: 2 }), 8],
];
const references = new Map<string, Promise<LayoutRun>>();
// The first case (forward KL, TP 2, divisor 128) also writes its checkpoint, which the last test reads back.
const savedRunDir = scratchDir('vocab-padding-run');
let savedRun: LayoutRun | null = null;

for (const lo of losses) {
  const label = `${lo.kind}, kdRatio ${lo.kdRatio}, τ ${lo.temperature}`;
  const pair: ModelPair = { ...odd, nextTokenLabels: lo.kdRatio < 1 };
  const loss = fixtureLoss(lo);
  for (const [l, divisor] of layouts) {
    test(`999 ids, ${label}: ${nameOf(l)} (divisor ${divisor}, ${pairedVocabSize([999], 2, divisor)} rows) matches one worker`, async () => {
      if (!references.has(label)) references.set(label, oneWorker(STEPS, MICRO, loss, pair));
      const want = await references.get(label)!;
      if (lo.kdRatio < 1) assert.ok(want.steps[0].ceLoss !== undefined && want.steps[0].ceLoss > 1, `one worker reports a CE term (${want.steps[0].ceLoss})`);
      const saving = savedRun === null && lo === losses[0] && l === layouts[0][0];
      const run = await runLayout(l, loss, { ...pair, makeVocabSizeDivisibleBy: divisor, ...(saving ? { saveTo: savedRunDir } : {}) });
      if (saving) savedRun = run;
      const what = `999 ids, ${label}, ${nameOf(l)}`;
      assertSteps(run.steps, want.steps, LOSS_REL, what, lo.kdRatio < 1 ? ['kdLoss', 'ceLoss'] : ['kdLoss'], PART_REL);
      assertWeights(run.weights, want.weights, WEIGHT_ABS, what);
      assertOptimizer(run.optimizer, want.optimizer, what);
    });
  }
}

test('999 ids, skew_kl with CE under TP 2 with divisor 1024 (2048 rows): TP rank 1 holds only padding, and the run still matches one worker', async () => {
  const lo = losses[3];
  const label = `${lo.kind}, kdRatio ${lo.kdRatio}, τ ${lo.temperature}`;
  const pair: ModelPair = { ...odd, nextTokenLabels: true };
  if (!references.has(label)) references.set(label, oneWorker(STEPS, MICRO, fixtureLoss(lo), pair));
  const want = await references.get(label)!;
  const run = await runLayout(layout({ tp: 2 }), fixtureLoss(lo), { ...pair, makeVocabSizeDivisibleBy: 1024 });
  assert.ok(
    run.padding.some((p) => p.rank === 1 && p.rows === 1024),
    'rank 1 holds 1024 padding rows',
  );
  assertSteps(run.steps, want.steps, LOSS_REL, 'rank 1 all padding', ['kdLoss', 'ceLoss'], PART_REL);
  assertWeights(run.weights, want.weights, WEIGHT_ABS, 'rank 1 all padding');
  assertOptimizer(run.optimizer, want.optimizer, 'rank 1 all padding');
});

test("999 ids: the fixture ids (and so the next-token labels) reach both TP ranks' rows, so both compute CE terms", () => {
  const ids = [...readAllSafetensors(fixture('llama-teacher', 'expected.safetensors')).get('input_ids')!.data];
  assert.ok(ids.some((x) => x >= 512) && ids.some((x) => x < 487), `ids ${ids.join(' ')} do not span both ranks`);
  assert.ok(
    ids.every((x) => x < 999),
    'every id is inside the cut vocabulary',
  );
});

/** The shapes a safetensors file declares, read from its header as any loader reads it (u64 LE length, JSON). */
function safetensorsShapes(file: string): Map<string, number[]> {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { shape?: number[] }>;
  return new Map(
    Object.entries(header)
      .filter(([k]) => k !== '__metadata__')
      .map(([k, v]) => [k, v.shape ?? []]),
  );
}

test('a GPT-2 student with 999 ids (tied wte, its copy on the last stage padded too) under TP 2 × PP 2, divisor 128, matches one worker', async () => {
  // Clipped to a tiny norm so that the gradients' scale reaches the weights (as modelParallel.test.ts's GPT-2 cases).
  const pair: ModelPair = { student: randomGpt2Checkpoint({ nEmbd: 48, nHead: 4, nLayer: 2, vocab: 999, seed: 7 }), teacher: odd.teacher, clipGrad: 1e-5 };
  const want = await oneWorker(STEPS, MICRO, fixtureLoss(), pair);
  const l = layout({ tp: 2, pp: 2 });
  const run = await runLayout(l, fixtureLoss(), { ...pair, makeVocabSizeDivisibleBy: 128 });
  assert.ok(
    run.padding.some((p) => p.name === 'transformer.wte.weight' && p.rank >= 2),
    'the last stage holds a padded copy of wte',
  );
  assertSteps(run.steps, want.steps, LOSS_REL, `GPT-2 999 ids ${nameOf(l)}`);
  assertWeights(run.weights, want.weights, WEIGHT_ABS, `GPT-2 999 ids ${nameOf(l)}`);
  assertOptimizer(run.optimizer, want.optimizer, `GPT-2 999 ids ${nameOf(l)}`);
});

// ---- Vocabularies that differ by padding ----

for (const c of [
  { student: 1000, teacher: 1024, divisor: 128, what: 'the teacher padded past the student (Qwen 152,064 vs 151,936)' },
  { student: 1003, teacher: 999, divisor: 1, what: 'the student larger, padded alone to 1004 and the teacher to 1000 (one size for both: 1004)' },
]) {
  test(`TP 2, ${c.what}: KD on the shared ids, CE on the student's own, the same log line as one worker`, async () => {
    const pair: ModelPair = {
      student: llamaWithVocab('llama-student', c.student, 3),
      teacher: llamaWithVocab('llama-teacher', c.teacher, 4),
      nextTokenLabels: true,
      makeVocabSizeDivisibleBy: c.divisor,
    };
    const oneLog: string[] = [];
    const tpLog: string[] = [];
    const want = await oneWorker(STEPS, MICRO, fixtureLoss({ kdRatio: 0.5, log: (line) => oneLog.push(line) }), pair);
    const run = await runLayout(layout({ tp: 2 }), fixtureLoss({ kdRatio: 0.5, log: (line) => tpLog.push(line) }), pair);
    const note = sharedVocab(c.teacher, c.student).note;
    assert.ok(note);
    assert.deepEqual(oneLog, [note], 'one worker logs the alignment once');
    assert.deepEqual(tpLog, [note], 'TP logs the same line once (TP rank 0)');
    const loaded = loadShardedPair({ student: pair.student!, teacher: pair.teacher!, layout: layout({ tp: 2 }), rank: 1, makeVocabSizeDivisibleBy: c.divisor });
    for (const m of [loaded.student, loaded.teacher!]) for (const v of m.params.values()) v.dispose();
    assert.equal(loaded.vocabNote, note, 'loadShardedPair gives the line for a run to log before its first step');
    const what = `TP 2, student ${c.student} ← teacher ${c.teacher}`;
    assertSteps(run.steps, want.steps, LOSS_REL, what, ['kdLoss', 'ceLoss'], PART_REL);
    assertWeights(run.weights, want.weights, WEIGHT_ABS, what);
    assertOptimizer(run.optimizer, want.optimizer, what);
  });
}

// ---- The flag and the layout checks before a run ----

test('--make_vocab_size_divisible_by (default 128) reaches the recipe; --tp_size 2 accepts odd and differing vocabularies', () => {
  const argv = ['--name', 'v', '--student_path', 's', '--teacher_path', 't'];
  assert.equal(recipeFromFlags('distill', argv, () => 'd').parallel.makeVocabSizeDivisibleBy, 128);
  assert.equal(recipeFromFlags('distill', [...argv, '--make_vocab_size_divisible_by', '64'], () => 'd').parallel.makeVocabSizeDivisibleBy, 64);
  assert.throws(() => recipeFromFlags('distill', [...argv, '--make_vocab_size_divisible_by', '0'], () => 'd'), /make_vocab_size_divisible_by/);
  const tp2 = layout({ tp: 2 });
  const recipe = (studentPath: string, teacherPath: string, tpSize = 2): Parameters<typeof checkModelParallelRecipe>[0] =>
    distillationRecipe({ name: 'v', studentPath, teacherPath, parallel: { devicesPerNode: tpSize, tpSize } });
  checkModelParallelRecipe(recipe(odd.student!, odd.teacher!), tp2);
  checkModelParallelRecipe(recipe(llamaWithVocab('llama-student', 1000, 5), llamaWithVocab('llama-teacher', 1024, 6)), tp2);
  // What padding does not fix is still refused with its arithmetic: the student's 2 heads over 4 ranks.
  assert.throws(() => checkModelParallelRecipe(recipe(odd.student!, odd.teacher!, 4), layout({ tp: 4 })), /2 attention heads do not split over --tp_size 4/);
});

// ---- Checkpoints keep the model's own vocabulary ----

test('the saved student and AdamW moments keep 999 rows, and resume under another padding and on one worker', async () => {
  const run = savedRun;
  const ref = latestCheckpoint(savedRunDir);
  assert.ok(run && ref, 'the first TP 2 case ran and wrote its checkpoint');
  const l = layout({ tp: 2 });
  const studentDir = join(ref.dir, 'student');
  const shapes = safetensorsShapes;
  assert.deepEqual(shapes(join(studentDir, 'model.safetensors')).get('model.embed_tokens.weight'), [999, 32]);
  assert.equal((JSON.parse(readFileSync(join(studentDir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size, 999);
  const opt = shapes(join(ref.dir, 'optimizer.safetensors'));
  assert.deepEqual(
    [opt.get('exp_avg.model.embed_tokens.weight'), opt.get('exp_avg_sq.model.embed_tokens.weight')],
    [
      [999, 32],
      [999, 32],
    ],
  );

  // One worker loads it as any checkpoint.
  const one = await loadModel(studentDir, { trainable: false });
  const full = (await one.params.get('model.embed_tokens.weight')!.data()) as Float32Array;
  one.dispose();
  assert.deepEqual(full, run.weights.get('model.embed_tokens.weight'));

  // TP 2 with divisor 8 (1008 rows): rank 1 holds rows [504, 999) and 9 zero rows, weights and moments.
  const m = loadShardedModel(studentDir, l, 1, true, { paddedVocab: pairedVocabSize([999], 2, 8) });
  try {
    const state = loadShardedOptimizerState(ref, m);
    const name = 'model.embed_tokens.weight';
    const local = (await m.params.get(name)!.data()) as Float32Array;
    assert.equal(local.length, 504 * 32);
    const expectRows = (got: Float32Array, want: Float32Array, what: string): void => {
      assert.deepEqual(got.subarray(0, 495 * 32), want.subarray(504 * 32, 999 * 32), `${what}: rows [504, 999)`);
      assert.ok(
        got.subarray(495 * 32).every((x) => x === 0),
        `${what}: the 9 padding rows are zero`,
      );
    };
    expectRows(local, full, 'weight');
    expectRows(state.moments.get(name)!.m, run.optimizer.moments.get(name)!.m, 'AdamW m');
    expectRows(state.moments.get(name)!.v, run.optimizer.moments.get(name)!.v, 'AdamW v');
  } finally {
    for (const v of m.params.values()) v.dispose();
  }
});
