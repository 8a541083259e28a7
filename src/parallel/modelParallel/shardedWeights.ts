/**
 * A model-parallel rank's weights: sliced from a plain Hugging Face checkpoint on load (only the rank's slices
 * reach its device), and gathered back into full tensors on rank 0 to be written, so that every checkpoint, whatever
 * the layout, is the plain Hugging Face layout that one worker and `transformers` load, and resuming with another
 * layout slices it differently. Under TP the vocabulary rows are padded (vocabPadding.ts): the padding exists only
 * on the ranks, as zero rows that no file holds.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readModelConfig, withHostWeights } from '../../checkpoint/load.ts';
import type { SavableModel } from '../../checkpoint/save.ts';
import { readOptimizerState, type CheckpointRef } from '../../train/trainingCheckpoint.ts';
import type { ModelConfig } from '../../model/config.ts';
import type { AdamW, AdamWState } from '../../optim/adamw.ts';
import { coordsOf, rankOf, worldSize, type ParallelLayout } from '../layout.ts';
import { arrayToFrame, frameToArray } from '../tensorFrame.ts';
import type { Collectives } from './collectives.ts';
import type { ShardedModel } from './modelParallelTrainer.ts';
import { localParams, localPart, placeSlice } from './shardSpec.ts';
import { sharedVocab } from '../../losses/vocabAlignment.ts';
import { pairedVocabSize, recordVocabShard } from './vocabPadding.ts';

export interface ShardedLoadOptions {
  /**
   * The rows the vocabulary pads to under TP: pairedVocabSize(...) of the student's and the teacher's vocabularies
   * and --make_vocab_size_divisible_by, the same for both so each rank holds the same ids of each. Default: this
   * model's vocabulary padded to a multiple of tp only.
   */
  paddedVocab?: number;
}

/**
 * Loads rank `rank`'s slices of the checkpoint in `dir` as variables on the current backend; the embedding and head
 * slices are recorded as vocabulary shards (vocabShardOf) for the stage and the loss to mask their padding.
 */
export function loadShardedModel(dir: string, layout: ParallelLayout, rank: number, trainable: boolean, o: ShardedLoadOptions = {}): ShardedModel {
  return withHostWeights(dir, (config, read) => {
    const spec = localParams(config, layout, coordsOf(layout, rank), o.paddedVocab);
    const params = new Map<string, tf.Variable>();
    for (const [name, p] of spec) {
      const local = localPart(read(name), p);
      const v = tf.tidy(() => tf.variable(tf.tensor(local, p.localShape, 'float32'), trainable));
      if (p.vocab) recordVocabShard(v, p.vocab);
      params.set(name, v);
    }
    return { config, params, spec };
  });
}

/** A run's student and teacher on one rank, cut the same way. */
export interface ShardedPair {
  student: ShardedModel;
  /** null when pretraining. */
  teacher: ShardedModel | null;
  /** The vocabulary-alignment line (vocabAlignment.ts) when their vocabularies differ, for the run log. */
  vocabNote: string | null;
}

/**
 * Loads rank `rank`'s slices of a student (trainable) and its teacher (frozen), both padded to the pair's one
 * vocabulary size under `--make_vocab_size_divisible_by` (pairedVocabSize), so every TP rank holds the same ids of
 * both, as the vocabulary-parallel loss needs.
 */
export function loadShardedPair(o: {
  student: string;
  teacher: string | null;
  layout: ParallelLayout;
  rank: number;
  makeVocabSizeDivisibleBy?: number;
}): ShardedPair {
  const sv = readModelConfig(o.student).vocabSize;
  const tv = o.teacher ? readModelConfig(o.teacher).vocabSize : null;
  const paddedVocab = pairedVocabSize(tv === null ? [sv] : [sv, tv], o.layout.tp, o.makeVocabSizeDivisibleBy);
  const student = loadShardedModel(o.student, o.layout, o.rank, true, { paddedVocab });
  try {
    const teacher = o.teacher ? loadShardedModel(o.teacher, o.layout, o.rank, false, { paddedVocab }) : null;
    return { student, teacher, vocabNote: tv === null ? null : sharedVocab(tv, sv).note };
  } catch (e) {
    for (const v of student.params.values()) v.dispose();
    throw e;
  }
}

/** This rank's slices of the AdamW moments saved (as full tensors) in a checkpoint; zero on the padding rows. */
export function loadShardedOptimizerState(ref: CheckpointRef, model: ShardedModel): AdamWState {
  return readOptimizerState(ref, model.spec.keys(), (name, full) => localPart(full, model.spec.get(name)!));
}

/** The full student and optimizer state, assembled on rank 0 from every rank's slices. */
export interface GatheredState {
  model: SavableModel;
  optimizer: Pick<AdamW, 'state'>;
}

/**
 * Collective: every rank of the first DP and CP replica sends its parameters and moments to rank 0, which places
 * them into full tensors of the model's own vocabulary (the padding rows stay behind). Returns the full state on
 * rank 0, null elsewhere.
 */
export async function gatherFullState(
  coll: Collectives,
  layout: ParallelLayout,
  rank: number,
  model: ShardedModel,
  optimizer: AdamW,
  tag: string,
): Promise<GatheredState | null> {
  const me = coordsOf(layout, rank);
  const senders: number[] = [];
  for (let r = 0; r < worldSize(layout); r++) {
    const c = coordsOf(layout, r);
    if (c.dp === 0 && c.cp === 0) senders.push(r);
  }
  if (!senders.includes(rank)) return null;
  const state = await optimizer.state();
  const names = [...model.params.keys()];
  const mine = await Promise.all(names.map(async (n) => (await model.params.get(n)!.data()) as Float32Array));
  if (rank !== 0) {
    const tensors = names.flatMap((n, i) => {
      const mv = state.moments.get(n)!;
      return [arrayToFrame(mine[i], [mine[i].length]), arrayToFrame(mv.m, [mv.m.length]), arrayToFrame(mv.v, [mv.v.length])];
    });
    coll.transport.send(rankOf(layout, { ...me, pp: 0, tp: 0, dp: 0, cp: 0 }), { kind: 'paramShards', tag, names, tensors });
    return null;
  }
  const config: ModelConfig = model.config;
  const full = new Map<string, { shape: number[]; w: Float32Array; m: Float32Array; v: Float32Array }>();
  // Each sender's layout of its slices, worked out once per gather (not once per tensor), padded as this rank's.
  const paddedVocab = [...model.spec.values()].find((p) => p.vocab)?.vocab?.paddedSize;
  const specs = new Map(senders.map((r) => [r, localParams(config, layout, coordsOf(layout, r), paddedVocab)]));
  const place = (r: number, name: string, w: Float32Array, m: Float32Array, v: Float32Array): void => {
    const p = specs.get(r)!.get(name);
    if (!p) throw new Error(`gather: worker ${r} sent ${name}, which its layout position does not hold`);
    let f = full.get(name);
    if (!f) {
      const n = p.fullShape.reduce((a, b) => a * b, 1);
      f = { shape: p.fullShape, w: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n) };
      full.set(name, f);
    }
    placeSlice(f.w, p.fullShape, p.slice, w);
    placeSlice(f.m, p.fullShape, p.slice, m);
    placeSlice(f.v, p.fullShape, p.slice, v);
  };
  // Rank 0 holds the first stage, and with tied embeddings the last stage's copy is the same values: rank 0's
  // slices go in last so they win.
  for (const r of senders.filter((x) => x !== 0)) {
    const msg = await coll.transport.receive(r, 'paramShards');
    if (msg.tag !== tag) throw new Error(`gather out of step: expected ${tag} from worker ${r}, got ${msg.tag}`);
    msg.names.forEach((n, i) =>
      place(
        r,
        n,
        frameToArray(msg.tensors[3 * i]) as Float32Array,
        frameToArray(msg.tensors[3 * i + 1]) as Float32Array,
        frameToArray(msg.tensors[3 * i + 2]) as Float32Array,
      ),
    );
  }
  names.forEach((n, i) => {
    const mv = state.moments.get(n)!;
    place(0, n, mine[i], mv.m, mv.v);
  });
  // Model order, as the file of a single worker lists them.
  const ordered = [...localParams(config, { tp: 1, cp: 1, dp: 1, pp: 1 }, { tp: 0, cp: 0, dp: 0, pp: 0 }).keys()];
  const missing = ordered.filter((n) => !full.has(n));
  if (missing.length) throw new Error(`gather: no rank sent ${missing.slice(0, 3).join(', ')}`);
  const params = new Map(ordered.map((n) => [n, { shape: full.get(n)!.shape, data: async () => full.get(n)!.w }] as const));
  const moments = new Map(ordered.map((n) => [n, { m: full.get(n)!.m, v: full.get(n)!.v }] as const));
  return { model: { config, params }, optimizer: { state: async () => ({ step: state.step, moments }) } };
}
