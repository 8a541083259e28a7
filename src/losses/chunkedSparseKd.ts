/**
 * KD against sparse teacher targets (top-K, sampled; see sparseTargets.ts) from the student's hidden states,
 * chunked like the dense loss so that the student's [N, V] logits are never whole. The targets are data, never
 * differentiated.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import type { ChunkTerm } from './chunkedHead.ts';
import { kdWithCe, type KdLossResult } from './chunkedKd.ts';
import { kdRatioOf, validateKdOptions } from './mixing.ts';
import { type SparseTargets, sliceTargets, sparseGradient, sparsePerPosition, validateSparseTargets } from './sparseTargets.ts';
import type { KdLossOptions } from './types.ts';

export interface SparseKdFromHiddenArgs {
  /** [N, h] and [V_s, h]: the student's hidden states and head. */
  studentHidden: tf.Tensor2D;
  studentHead: tf.Tensor2D;
  /** The teacher's sparse targets, [N, K]; ids must be < V_s. */
  targets: SparseTargets;
  /** [N] int32 next-token labels for the CE term; required when α < 1. */
  labels?: tf.Tensor1D;
  /** [N] float32. */
  mask: tf.Tensor1D;
  /** Only temperature, scaleByTemperatureSquared and kdRatio apply (the estimator is `targets.kind`). */
  options: KdLossOptions;
  chunkSize?: number;
}

/** The targets' tensors, in a fixed order, and the targets rebuilt from (saved copies of) them. */
function targetTensors(t: SparseTargets): tf.Tensor[] {
  if (t.kind === 'sampled') return t.logProbs ? [t.ids, t.counts, t.logProbs] : [t.ids, t.counts];
  return [t.ids, t.logProbs];
}
function rebuild(t: SparseTargets, data: tf.Tensor[]): SparseTargets {
  const [ids, second, third] = data as tf.Tensor2D[];
  if (t.kind === 'sampled') return { ...t, ids, counts: second, logProbs: third };
  return { ...t, ids, logProbs: second };
}

/** The sparse KD term of a chunk. */
export function sparseTerm(targets: SparseTargets, temperature: number): ChunkTerm {
  const chunkOf = (data: tf.Tensor[], s: number, e: number): SparseTargets => sliceTargets(rebuild(targets, data), s, e);
  return {
    tensors: targetTensors(targets),
    value: (z, s, e, data) => tf.tidy(() => sparsePerPosition(z, chunkOf(data, s, e), temperature)),
    gradient: (z, s, e, rowScale, data) =>
      tf.tidy(() => tf.mul(sparseGradient(z, chunkOf(data, s, e), temperature), tf.div(rowScale, temperature)) as tf.Tensor2D),
  };
}

/** Sparse-target KD (+ CE) loss from hidden states; `kd` is what sparseTargets.ts documents for `targets.kind`. */
export function sparseKdLossFromHidden(args: SparseKdFromHiddenArgs): KdLossResult {
  const { options, labels, mask, targets } = args;
  validateKdOptions(options);
  validateSparseTargets(targets, args.studentHidden.shape[0], options.temperature);
  const kdRatio = kdRatioOf(options);
  if (kdRatio < 1 && !labels) throw new ConfigError(`KD kdRatio ${kdRatio} < 1 needs labels for the cross-entropy term`);
  const kd = sparseTerm(targets, options.temperature);
  return { ...kdWithCe(args.studentHidden, args.studentHead, mask, kd, labels, options, args.chunkSize), notes: [] };
}
