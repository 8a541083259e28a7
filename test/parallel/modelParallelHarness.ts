/**
 * Runs KD steps on the fixture batch under a model-parallel layout with every rank in this process (in-process
 * transports: each message still crosses as an encoded frame), and the same steps on one worker through the
 * ordinary operators, so tests can compare the two. By default the pair is the fixtures' llama-student and
 * llama-teacher; `ModelPair` points either at another checkpoint directory (a temporary GPT-2, say), and sets
 * the vocabulary padding under TP (--make_vocab_size_divisible_by).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { from, lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { attachStudent, backward, klLoss, optimizerStep, teacherTargets } from '../../operators/index.ts';
import type { KlLossOptions } from '../../operators/klLoss.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { mulberry32 } from '../../src/data/prng.ts';
import { encodeSafetensors } from '../../src/io/safetensors.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { expectedParamShapes } from '../../src/model/params.ts';
import { AdamW, type AdamWState } from '../../src/optim/adamw.ts';
import { coordsOf, worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { ModelParallelTrainer, type ShardedModel } from '../../src/parallel/modelParallel/modelParallelTrainer.ts';
import { gatherFullState, loadShardedPair } from '../../src/parallel/modelParallel/shardedWeights.ts';
import type { StepResult, TokenBatch } from '../../src/train/batch.ts';
import { saveTrainingCheckpoint } from '../../src/train/trainingCheckpoint.ts';
import { expectedJson, fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixtureBatches } from '../helpers/fixtureBatches.ts';
import { scratchDir } from '../model/checkpointVariant.ts';

export interface LayoutRun {
  /** Rank 0's step results. */
  steps: StepResult[];
  /** Every rank's step results, by rank (one worker: just its own). */
  perRank: StepResult[][];
  /** The final student weights, full Hugging Face tensors by name. */
  weights: Map<string, Float32Array>;
  /** The final AdamW state, full tensors (gathered on rank 0 under a layout, as a checkpoint writes it). */
  optimizer: AdamWState;
  /**
   * Under a layout, each rank's vocabulary padding after the steps: per embedding/head slice with padding rows, the
   * largest |value| there of the weight and of both AdamW moments (none under one worker).
   */
  padding: { rank: number; name: string; rows: number; largest: number }[];
}

/** Which checkpoints to distil between, and what the labels are. */
export interface ModelPair {
  /** Student checkpoint directory (default: the fixtures' llama-student). */
  student?: string;
  /** Teacher checkpoint directory (default: the fixtures' llama-teacher). */
  teacher?: string;
  /**
   * The fixture batches carry all-zero labels (the trajectory is pure KD). With this set, label i is input id i + 1
   * (the last position wraps to the row's first id), so a CE term reads labels from the whole vocabulary.
   */
  nextTokenLabels?: boolean;
  /** Global-norm clipping threshold (default: the fixture's 1.0, which its small gradients never reach). */
  clipGrad?: number;
  /**
   * --make_vocab_size_divisible_by under TP (default 1: the vocabulary pads only to a multiple of tp). Both models
   * pad to the pair's one size (pairedVocabSize), as a run does.
   */
  makeVocabSizeDivisibleBy?: number;
  /** Under a layout: also write the gathered state as a training checkpoint (step = steps run) under this run directory. */
  saveTo?: string;
}

export function fixtureLoss(over: Partial<KlLossOptions> = {}): KlLossOptions {
  return { ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 7, ...over };
}

function optimizerFor(params: Map<string, tf.Variable>): AdamW {
  const tr = expectedJson().train;
  return new AdamW(params, { beta1: tr.betas[0], beta2: tr.betas[1], eps: tr.eps, weightDecay: tr.weight_decay, weightDecayAll: true });
}

function dirs(pair: ModelPair): { student: string; teacher: string } {
  return { student: pair.student ?? fixture('llama-student'), teacher: pair.teacher ?? fixture('llama-teacher') };
}

/** The fixture's micro-batches, with next-token labels when the pair asks for them. */
export function pairBatches(steps: number, microPerStep: number, pair: ModelPair = {}): TokenBatch[] {
  const batches = fixtureBatches(steps, microPerStep);
  if (!pair.nextTokenLabels) return batches;
  return batches.map((b) => {
    const [rows, seq] = b.inputIds.shape;
    const ids = b.inputIds.dataSync();
    const labels = new Int32Array(rows * seq);
    for (let r = 0; r < rows; r++) for (let i = 0; i < seq; i++) labels[r * seq + i] = ids[r * seq + ((i + 1) % seq)];
    b.labels.dispose();
    return { ...b, labels: tf.tensor2d(labels, [rows, seq], 'int32') };
  });
}

/** The steps on one worker, through the pipeline's own operators. */
export async function oneWorker(steps: number, microPerStep: number, loss = fixtureLoss(), pair: ModelPair = {}): Promise<LayoutRun> {
  const tr = expectedJson().train;
  const d = dirs(pair);
  const student = await loadModel(d.student, { trainable: true });
  const teacher = await loadModel(d.teacher, { trainable: false });
  const optimizer = optimizerFor(student.params);
  try {
    const results = await lastValueFrom(
      from(pairBatches(steps, microPerStep, pair)).pipe(
        teacherTargets(teacher),
        attachStudent(student),
        klLoss(loss),
        backward(student),
        optimizerStep({ optimizer, lrAt: () => tr.lr, clipGrad: pair.clipGrad ?? tr.clip_grad_norm, nanPolicy: 'stop', globalBatchSize: 2 }),
        toArray(),
      ),
    );
    const weights = new Map<string, Float32Array>();
    for (const [n, v] of student.params) weights.set(n, (await v.data()) as Float32Array);
    return { steps: results, perRank: [results], weights, optimizer: await optimizer.state(), padding: [] };
  } finally {
    optimizer.dispose();
    student.dispose();
    teacher.dispose();
  }
}

/** The same steps with every rank of `layout` in this process; micro-batches are dealt to the DP ranks in turn. */
export async function underLayout(layout: ParallelLayout, steps: number, microPerStep: number, loss = fixtureLoss(), pair: ModelPair = {}): Promise<LayoutRun> {
  const tr = expectedJson().train;
  const d = dirs(pair);
  const n = worldSize(layout);
  const transports = localTransports(n);
  const batches = pairBatches(steps, microPerStep, pair);
  const ranks = transports.map((t, rank) => {
    const coll = new Collectives(t);
    const { student, teacher } = loadShardedPair({
      student: d.student,
      teacher: d.teacher,
      layout,
      rank,
      makeVocabSizeDivisibleBy: pair.makeVocabSizeDivisibleBy ?? 1,
    });
    const optimizer = optimizerFor(student.params);
    const trainer = new ModelParallelTrainer({
      layout,
      rank,
      coll,
      student,
      teacher,
      loss,
      optimizer,
      clipGrad: pair.clipGrad ?? tr.clip_grad_norm,
      lrAt: () => tr.lr,
      nanPolicy: 'stop',
      globalBatchSize: 2,
    });
    return { rank, coll, student, teacher, optimizer, trainer };
  });
  try {
    const perRank = await Promise.all(
      ranks.map(async (r) => {
        const dp = coordsOf(layout, r.rank).dp;
        const out: StepResult[] = [];
        for (let s = 0; s < steps; s++) {
          const mine: TokenBatch[] = batches.filter((b) => b.position.step === s && b.position.micro % layout.dp === dp);
          out.push(await r.trainer.step(mine));
        }
        const padding = await paddingAfter(r.rank, r.student, r.optimizer);
        const full = await gatherFullState(r.coll, layout, r.rank, r.student, r.optimizer, 'final');
        const weights = new Map<string, Float32Array>();
        if (full) for (const [name, t] of full.model.params) weights.set(name, Float32Array.from(await t.data()));
        if (full && pair.saveTo) {
          await saveTrainingCheckpoint(pair.saveTo, full.model, full.optimizer, {
            format: 1,
            step: steps,
            samplesSeen: steps * 2,
            seed: 0,
            skippedSteps: 0,
            fingerprint: { student: d.student, teacher: d.teacher, data: 'fixture', seqLength: 17, globalBatchSize: 2 },
          });
        }
        return { steps: out, weights, optimizer: full ? await full.optimizer.state() : null, padding };
      }),
    );
    const optimizer = perRank[0].optimizer;
    if (!optimizer) throw new Error('gatherFullState returned nothing on rank 0');
    return {
      steps: perRank[0].steps,
      perRank: perRank.map((p) => p.steps),
      weights: perRank[0].weights,
      optimizer,
      padding: perRank.flatMap((p) => p.padding),
    };
  } finally {
    for (const b of batches) {
      b.inputIds.dispose();
      b.labels.dispose();
      b.lossMask.dispose();
    }
    for (const r of ranks) {
      r.trainer.dispose();
      r.optimizer.dispose();
      for (const v of r.student.params.values()) v.dispose();
      for (const v of r.teacher?.params.values() ?? []) v.dispose();
    }
  }
}

/** The largest |value| of each padded vocabulary slice's padding rows, over its weight and both AdamW moments. */
async function paddingAfter(rank: number, model: ShardedModel, optimizer: AdamW): Promise<LayoutRun['padding']> {
  const state = await optimizer.state();
  const out: LayoutRun['padding'] = [];
  for (const [name, p] of model.spec) {
    if (!p.vocab || p.vocab.valid === p.vocab.rows) continue;
    const cols = p.localShape[1];
    const from = p.vocab.valid * cols;
    const w = (await model.params.get(name)!.data()) as Float32Array;
    const mv = state.moments.get(name)!;
    let largest = 0;
    for (const a of [w, mv.m, mv.v]) for (let i = from; i < a.length; i++) largest = Math.max(largest, Math.abs(a[i]));
    out.push({ rank, name, rows: p.vocab.rows - p.vocab.valid, largest });
  }
  return out;
}

export interface Gpt2Shape {
  nEmbd: number;
  nHead: number;
  nLayer: number;
  vocab: number;
  seed: number;
}

/**
 * A GPT-2 checkpoint (gpt2-tiny's config with these sizes) with random weights in a temporary directory. Every
 * tensor is random, biases and LayerNorm weights too (Hugging Face's init zeroes the biases, which would hide a
 * misplaced bias slice). Matrices are uniform with standard deviation 0.1 / √fan_in (embeddings 0.1): larger
 * activations make the key bias drift apart between two correct implementations, since its gradient is zero in
 * exact arithmetic (softmax ignores a per-query constant q·b_k) and AdamW divides float noise by √v + 1e-8;
 * at 0.3 / √fan_in that noise reaches 4e-5 in five steps, at 0.1 it stays below 3e-6.
 */
export function randomGpt2Checkpoint(shape: Gpt2Shape): string {
  const raw = JSON.parse(readFileSync(fixture('gpt2-tiny', 'config.json'), 'utf8')) as Record<string, unknown>;
  const json: Record<string, unknown> = { ...raw, n_embd: shape.nEmbd, n_head: shape.nHead, n_layer: shape.nLayer, vocab_size: shape.vocab };
  const dir = scratchDir('gpt2-mp');
  const file = join(dir, 'config.json');
  const config = parseModelConfig(json, file);
  const uniform = mulberry32(shape.seed);
  const tensors = [...expectedParamShapes(config)].map(([name, dims]) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const isNormWeight = /(ln_\d|ln_f)\.weight$/.test(name);
    const fanIn = dims.length < 2 || dims[0] === config.vocabSize || name.endsWith('wpe.weight') ? 1 : dims[0];
    const scale = (dims.length >= 2 ? 0.1 : 0.1 / Math.sqrt(3)) * Math.sqrt(3 / fanIn);
    for (let i = 0; i < n; i++) data[i] = (isNormWeight ? 1 : 0) + (uniform() * 2 - 1) * scale;
    return { name, dtype: 'F32' as const, shape: dims, data };
  });
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  writeFileSync(file, JSON.stringify(json));
  return dir;
}

// ---- Comparisons of a layout's run with one worker's ----

const relative = (a: number, b: number): number => Math.abs(a - b) / Math.abs(b);

/**
 * Per-step loss and grad norm within `tol` relative of the reference; `fields` (the KD and CE parts of the loss)
 * within `fieldTol`. The grad norm is what shows a gradient tp× too large: AdamW hardly sees a gradient's scale.
 */
export function assertSteps(got: StepResult[], want: StepResult[], tol: number, what: string, fields: ('kdLoss' | 'ceLoss')[] = [], fieldTol = tol): void {
  assert.equal(got.length, want.length, `${what}: ${got.length} steps, want ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    assert.equal(got[i].skipped, false, `${what} step ${i} skipped`);
    assert.equal(got[i].tokens, want[i].tokens, `${what} step ${i}: loss tokens`);
    for (const [k, t] of [['loss', tol], ['gradNorm', tol], ...fields.map((f) => [f, fieldTol] as const)] as const) {
      const g = got[i][k];
      const w = want[i][k];
      assert.ok(g !== undefined && w !== undefined, `${what} step ${i}: ${k} missing (${g} vs ${w})`);
      assert.ok(relative(g, w) <= t, `${what} step ${i}: ${k} ${g} vs ${w} (rel ${relative(g, w).toExponential(2)})`);
    }
  }
}

/** Every tensor of `want` present in `got` with its length, none extra, each within `tol` absolute. */
export function assertWeights(got: Map<string, Float32Array>, want: Map<string, ArrayLike<number>>, tol: number, what: string): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${what}: tensor names`);
  for (const [name, w] of want) {
    assert.equal(got.get(name)!.length, w.length, `${what}: ${name} has ${got.get(name)!.length} values, want ${w.length}`);
    const d = maxAbsDiff(got.get(name)!, w);
    assert.ok(d <= tol, `${what}: ${name} differs by ${d.toExponential(2)} (abs)`);
  }
}

/** The gathered AdamW moments against the reference's, each within 1e-4 of that tensor's largest (as modelParallel.test.ts). */
export function assertOptimizer(got: AdamWState, want: AdamWState, what: string): void {
  assert.equal(got.step, want.step, `${what}: optimizer step`);
  assert.deepEqual([...got.moments.keys()].sort(), [...want.moments.keys()].sort(), `${what}: optimizer tensors`);
  for (const [name, w] of want.moments) {
    const g = got.moments.get(name)!;
    for (const k of ['m', 'v'] as const) {
      assert.equal(g[k].length, w[k].length, `${what}: AdamW ${k} of ${name} has ${g[k].length} values, want ${w[k].length}`);
      const scale = w[k].reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      assert.ok(scale > 0, `${what}: ${name} ${k} is all zero`);
      const d = maxAbsDiff(g[k], w[k]);
      assert.ok(d <= 1e-4 * scale, `${what}: AdamW ${k} of ${name} differs by ${d.toExponential(2)} (largest ${scale.toExponential(2)})`);
    }
  }
}
