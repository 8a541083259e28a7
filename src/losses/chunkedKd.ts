/**
 * The training loss from hidden states: (1 − α)·CE + α·τ²·KD, each a masked mean over N token positions, with the
 * student's [N, V] logits never materialised whole (see chunkedHead.ts). The teacher gives its logits per chunk,
 * either from its own hidden states and head or from a callback (a cache, a remote teacher); it is never
 * differentiated. When the vocabularies differ in size, KD compares ids [0, min(V_t, V_s)) (see vocabAlignment.ts)
 * while the CE keeps the student's full vocabulary.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import { hasSoftmaxKlKernels } from '../ops/softmaxKl.ts';
import { type ChunkTerm, chunkedHeadMeans } from './chunkedHead.ts';
import { type ChunkCache, RECOMPUTE } from './chunkCache.ts';
import { tokenCrossEntropy, tokenCrossEntropyGradient } from './crossEntropy.ts';
import { divergenceFromLogProbs, divergenceGradient, logSoftmax } from './divergences.ts';
import { fusedKdTerm } from './fusedKdTerm.ts';
import { kdRatioOf, mixLosses, validateKdOptions } from './mixing.ts';
import type { KdLossOptions } from './types.ts';
import type { TeacherSource } from './teacherSource.ts';
import { sharedVocab } from './vocabAlignment.ts';

/** Default rows per chunk: 128 × 151,936 × 4 B ≈ 78 MB per [chunk, V] tensor. */
export const DEFAULT_CHUNK_SIZE = 128;

/** What `--loss_chunk 0` (the default) aims at: 64 MiB per [chunk, V] float32 tensor. */
export const LOSS_CHUNK_BYTES = 64 << 20;

/**
 * Rows per chunk of the vocabulary-wide loss: `chunkSize` when given (> 0), else as many rows as fit
 * LOSS_CHUNK_BYTES for this vocabulary (512 at V = 32,768, 110 at 151,936, 4,096 at 4,096). Larger chunks mean
 * fewer ops: on the H200 (webgpu, config M) 128-row chunks ran at ~5,900 tokens/s and 512-row chunks at ~8,200;
 * on wasm (config S) 128 rows 177 and 2,048 rows 206 tokens/s.
 */
export function lossChunkRows(chunkSize: number, vocab: number): number {
  if (chunkSize > 0) return chunkSize;
  return Math.max(16, Math.floor(LOSS_CHUNK_BYTES / (4 * vocab)));
}

export interface KdFromHiddenArgs {
  /** [N, h]: the student's final hidden states, batch and sequence flattened. */
  studentHidden: tf.Tensor2D;
  /** [V_s, h]: the student's output projection (the embedding when tied). */
  studentHead: tf.Tensor2D;
  /** The teacher's logits [end − start, V_t] for rows [start, end); the loss disposes what it returns. */
  teacherLogitsFn?: (start: number, end: number) => tf.Tensor2D;
  /** [N, h_t] and [V_t, h_t]: the teacher's hidden states and head, used when teacherLogitsFn is absent. */
  teacherHidden?: tf.Tensor2D;
  teacherHead?: tf.Tensor2D;
  /** Optional [h_t, V_t]: teacherHead transposed, kept by a frozen teacher, so no chunk transposes it again. */
  teacherHeadTransposed?: tf.Tensor2D;
  /** [N] int32: the next-token labels for the CE term (see nextTokenTargets); required when α < 1. */
  labels?: tf.Tensor1D;
  /** [N] float32: 1 where a position counts (for the CE that is the mask of the predicted token). */
  mask: tf.Tensor1D;
  options: KdLossOptions;
  chunkSize?: number;
  /** Where the vocabulary-alignment note goes; it is also returned in `notes`. */
  log?: (line: string) => void;
}

export interface KdLossResult {
  /** (1 − α)·CE + α·kdScale·KD: the scalar to minimise. */
  loss: tf.Scalar;
  /** The masked mean divergence (not τ²-scaled). */
  kd: tf.Scalar;
  /** The masked mean next-token cross-entropy, when labels were given. */
  ce: tf.Scalar | null;
  /** Σ mask: 0 means the batch had nothing to learn from (and the loss is 0). */
  count: tf.Scalar;
  /** Things the caller should log once (vocabulary alignment). */
  notes: string[];
}

/**
 * The KD term of a chunk: aligned teacher and student log-probabilities at τ, and the divergence between them (the
 * composition, on every backend without the softmaxKl kernels; kdLossFromHidden takes fusedKdTerm on the others).
 */
export function kdTerm(teacher: TeacherSource, studentVocab: number, options: KdLossOptions, onNote: (note: string) => void): ChunkTerm {
  let noted = false;
  const logProbs = (z: tf.Tensor2D, s: number, e: number, data: tf.Tensor[], cache: ChunkCache): [tf.Tensor2D, tf.Tensor2D, number] => {
    // Teacher first, each in its own tidy: the raw teacher logits are dropped before the student's are made.
    let shared = studentVocab;
    const lpT = tf.tidy(() => {
      const zT = cache.remember(s, 'teacher', () => teacher.logits(s, e, data));
      if (zT.shape[0] !== e - s) throw new ConfigError(`teacher logits for rows [${s}, ${e}) have ${zT.shape[0]} rows`);
      const aligned = sharedVocab(zT.shape[1], studentVocab);
      shared = aligned.size;
      if (aligned.note && !noted) {
        noted = true;
        onNote(aligned.note);
      }
      const zTs = zT.shape[1] > shared ? tf.slice(zT, [0, 0], [e - s, shared]) : zT;
      return logSoftmax(zTs as tf.Tensor2D, options.temperature);
    });
    const lpS = tf.tidy(() => logSoftmax(studentVocab > shared ? (tf.slice(z, [0, 0], [e - s, shared]) as tf.Tensor2D) : z, options.temperature));
    return [lpT, lpS, shared];
  };
  return {
    tensors: teacher.tensors,
    value(z, s, e, data, cache = RECOMPUTE) {
      const [lpT, lpS] = logProbs(z, s, e, data, cache);
      if (options.kind === 'forward_kl') return klConsuming(lpT, lpS);
      if (options.kind === 'reverse_kl') return klConsuming(lpS, lpT);
      const v = divergenceFromLogProbs(lpT, lpS, options);
      lpT.dispose();
      lpS.dispose();
      return v;
    },
    gradient(z, s, e, rowScale, data, cache = RECOMPUTE) {
      const [lpT, lpS, shared] = logProbs(z, s, e, data, cache);
      const g = options.kind === 'forward_kl' ? forwardKlGradientConsuming(lpT, lpS) : divergenceGradient(lpT, lpS, options);
      lpT.dispose();
      lpS.dispose();
      // d/dz = d/ds / τ, folded into the row scale; ids past the shared range get no KD gradient.
      const scaled = tf.mul(g, tf.div(rowScale, options.temperature)) as tf.Tensor2D;
      g.dispose();
      if (shared === studentVocab) return scaled;
      const padded = tf.pad(scaled, [
        [0, 0],
        [0, studentVocab - shared],
      ]);
      scaled.dispose();
      return padded;
    },
  };
}

/** KL(p ‖ q) per row like klFromLogProbs, disposing its inputs as soon as it can (four [chunk, V] alive, not six). */
function klConsuming(logP: tf.Tensor2D, logQ: tf.Tensor2D): tf.Tensor1D {
  const d = tf.sub(logP, logQ);
  logQ.dispose();
  const p = tf.exp(logP);
  logP.dispose();
  const prod = tf.mul(p, d);
  p.dispose();
  d.dispose();
  const v = tf.sum(prod, -1) as tf.Tensor1D;
  prod.dispose();
  return v;
}

/**
 * p_s − p_t from log-probabilities it disposes as soon as each is used: four [chunk, V] tensors alive at the peak
 * (z, p_t, p_s, the difference) instead of six, for the most common loss.
 */
function forwardKlGradientConsuming(lpT: tf.Tensor2D, lpS: tf.Tensor2D): tf.Tensor2D {
  const pt = tf.exp(lpT);
  lpT.dispose();
  const ps = tf.exp(lpS);
  lpS.dispose();
  const g = tf.sub(ps, pt) as tf.Tensor2D;
  ps.dispose();
  pt.dispose();
  return g;
}

/** The next-token CE term of a chunk (at τ = 1, on the student's full vocabulary). */
export function ceTerm(labels: tf.Tensor1D): ChunkTerm {
  const rowsOf = (data: tf.Tensor[], s: number, e: number): tf.Tensor1D => tf.slice(data[0] as tf.Tensor1D, [s], [e - s]);
  return {
    tensors: [labels],
    value: (z, s, e, data) => tf.tidy(() => tokenCrossEntropy(z, rowsOf(data, s, e))),
    gradient: (z, s, e, rowScale, data) => tf.tidy(() => tokenCrossEntropyGradient(z, rowsOf(data, s, e), rowScale)),
  };
}

/** The teacher's per-chunk logits from the arguments (callback, or hidden · headᵀ). */
function teacherSource(args: KdFromHiddenArgs): TeacherSource {
  const fn = args.teacherLogitsFn;
  // A callback keeps its own tensors alive (a cache reader makes new ones per call).
  if (fn) return { tensors: [], logits: (s, e) => fn(s, e) };
  const { teacherHidden, teacherHead } = args;
  if (!teacherHidden || !teacherHead) {
    throw new ConfigError('kdLossFromHidden: give teacherLogitsFn, or both teacherHidden and teacherHead');
  }
  if (teacherHidden.shape[0] !== args.studentHidden.shape[0] || teacherHidden.shape[1] !== teacherHead.shape[1]) {
    throw new ConfigError(
      `kdLossFromHidden: teacherHidden ${teacherHidden.shape} and teacherHead ${teacherHead.shape} must be ` +
        `[${args.studentHidden.shape[0]}, h_t] and [V_t, h_t]`,
    );
  }
  const headT = args.teacherHeadTransposed;
  if (headT) {
    return {
      tensors: [teacherHidden, headT],
      logits: (s, e, data) => {
        const [th, twT] = data as [tf.Tensor2D, tf.Tensor2D];
        return tf.tidy(() => tf.matMul(tf.slice(th, [s, 0], [e - s, th.shape[1]]), twT) as tf.Tensor2D);
      },
    };
  }
  return {
    tensors: [teacherHidden, teacherHead],
    logits: (s, e, data) => {
      const [th, tw] = data as [tf.Tensor2D, tf.Tensor2D];
      return tf.tidy(() => tf.matMul(tf.slice(th, [s, 0], [e - s, th.shape[1]]), tw, false, true) as tf.Tensor2D);
    },
  };
}

/**
 * KD (+ CE) loss from hidden states, chunked so that peak memory is O(chunkSize × V), differentiable w.r.t.
 * studentHidden and studentHead through a custom gradient (analytic, recomputed per chunk). The tensors given are
 * saved for the backward pass, so they may be made inside the loss closure; those a teacherLogitsFn reads are its own.
 */
export function kdLossFromHidden(args: KdFromHiddenArgs): KdLossResult {
  const { options, labels, mask } = args;
  validateKdOptions(options);
  const kdRatio = kdRatioOf(options);
  if (kdRatio < 1 && !labels) throw new ConfigError(`KD kdRatio ${kdRatio} < 1 needs labels for the cross-entropy term`);
  if (labels && (labels.shape[0] !== mask.shape[0] || labels.dtype !== 'int32')) {
    throw new ConfigError(`kdLossFromHidden: labels must be int32 [${mask.shape[0]}], got ${labels.dtype} [${labels.shape}]`);
  }
  const notes: string[] = [];
  const note = (line: string): void => {
    notes.push(line);
    args.log?.(line);
  };
  const source = teacherSource(args);
  const studentVocab = args.studentHead.shape[0];
  if (hasSoftmaxKlKernels()) {
    // One fused kernel per chunk forward and two backward in place of the composition, the CE in the same passes.
    const fused = fusedKdTerm(source, studentVocab, options, note, labels);
    return { ...kdWithCe(args.studentHidden, args.studentHead, mask, fused, undefined, options, args.chunkSize), notes };
  }
  const kd = kdTerm(source, studentVocab, options, note);
  return { ...kdWithCe(args.studentHidden, args.studentHead, mask, kd, labels, options, args.chunkSize), notes };
}

/**
 * The shared tail of the dense and sparse losses: the KD term (and the CE term when labels are given) as chunked
 * means over the student's logits, mixed as (1 − α)·CE + α·kdScale·KD. A KD term of width 2 (the fused one given
 * labels) carries the CE as its second value, and `labels` is then left out.
 */
export function kdWithCe(
  hidden: tf.Tensor2D,
  head: tf.Tensor2D,
  mask: tf.Tensor1D,
  kdChunkTerm: ChunkTerm,
  labels: tf.Tensor1D | undefined,
  options: KdLossOptions,
  chunkSize = DEFAULT_CHUNK_SIZE,
): Omit<KdLossResult, 'notes'> {
  const ceInKd = (kdChunkTerm.width ?? 1) === 2;
  if (ceInKd && labels) throw new ConfigError('kdWithCe: the KD term already gives the CE; pass no labels');
  const terms = [kdChunkTerm];
  if (labels) terms.push(ceTerm(labels));
  const means = chunkedHeadMeans(hidden, head, mask, terms, chunkSize);
  // In a tidy: the slice under the reshape would otherwise outlive a call made outside one.
  const pick = (i: number): tf.Scalar => tf.tidy(() => tf.slice(means, [i], [1]).reshape([]) as tf.Scalar);
  const kd = pick(0);
  const hasCe = ceInKd || labels !== undefined;
  const ce = hasCe ? pick(1) : null;
  const count = pick(hasCe ? 2 : 1);
  means.dispose();
  return { loss: mixLosses(ce, kd, options), kd, ce, count };
}
