/**
 * Cache rows → what the loss takes from a teacher (src/train/batch.ts): sparse targets for top-K and sampled caches;
 * for a full cache, one of two exact forms:
 *
 * - forward KL at the cache's τ, same vocabulary: the `sampled` estimator with every id "drawn" and the probability
 *   as its weight, w = p_t: Σ_v p_t,v (log p_t,v − log p_s,v) is then the forward KL itself, and its gradient
 *   p_s − p_t, in O(V) per position.
 * - any other divergence or τ (or a padded vocabulary): the log-probs as the teacher's "hidden states" with an
 *   identity head, so the dense loss sees logits τ_c · log p_t = z − const, whose softmax at any τ is the teacher's.
 *   That costs a [V, V] product per position: meant for the small vocabularies a full cache is for.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import type { KdLossOptions } from '../losses/types.ts';
import type { SparseTeacherTargets, TeacherTargets } from '../train/batch.ts';
import type { CacheFingerprint } from './fingerprint.ts';
import type { CacheRows } from './spec.ts';

export type TopKLoss = 'topk_ghost' | 'topk_renorm';

export interface TargetOptions {
  loss: Pick<KdLossOptions, 'kind' | 'temperature'>;
  studentVocab: number;
  topk: TopKLoss;
  /** The [V, V] identity for the dense form of a full cache; owned by the caller. */
  identity: () => tf.Tensor2D;
  /** For messages: the samples the rows belong to. */
  samples: readonly number[];
}

/** Whether a full cache can take the O(V) weighted form for this loss. */
export function fullAsWeights(fp: CacheFingerprint, o: Pick<TargetOptions, 'loss' | 'studentVocab'>): boolean {
  return o.loss.kind === 'forward_kl' && o.loss.temperature === fp.temperature && fp.vocabSize === o.studentVocab;
}

export function teacherTargetsFromRows(rows: CacheRows, fp: CacheFingerprint, o: TargetOptions): TeacherTargets | SparseTeacherTargets {
  const n = rows.rows;
  if (fp.method === 'full') {
    const v = fp.vocabSize;
    if (!fullAsWeights(fp, o)) {
      const scaled = fp.temperature === 1 ? rows.logProbs : rows.logProbs.map((x) => x * fp.temperature);
      return { kind: 'hidden', hidden: tf.tensor2d(scaled, [n, v]), head: o.identity() };
    }
    // Renormalised in float64: a quantized row's probabilities need not sum to 1, and w must.
    const w = new Float32Array(n * v);
    const lp = new Float32Array(n * v);
    for (let r = 0; r < n; r++) {
      const row = rows.logProbs.subarray(r * v, (r + 1) * v);
      let max = -Infinity;
      for (let j = 0; j < v; j++) max = Math.max(max, row[j]);
      let sum = 0;
      for (let j = 0; j < v; j++) sum += Math.exp(row[j] - max);
      const lse = max + Math.log(sum);
      for (let j = 0; j < v; j++) {
        lp[r * v + j] = row[j] - lse;
        w[r * v + j] = Math.exp(row[j] - lse);
      }
    }
    const ids = tf.tidy(() => tf.tile(tf.range(0, v, 1, 'int32').reshape([1, v]), [n, 1]) as tf.Tensor2D);
    return {
      kind: 'sparse',
      targets: { kind: 'sampled', ids, counts: tf.tensor2d(w, [n, v]), logProbs: tf.tensor2d(lp, [n, v]), temperature: fp.temperature },
    };
  }
  const ids = rows.ids as Int32Array;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] >= o.studentVocab) {
      const r = rows.offsets.findIndex((off) => off > i) - 1;
      throw new ConfigError(
        `teacher cache: sample ${o.samples[Math.floor(r / fp.seqLength)]} position ${r % fp.seqLength} holds id ${ids[i]}, outside the student's vocabulary of ${o.studentVocab}`,
      );
    }
  }
  if (fp.method === 'topk') {
    const k = fp.topK;
    return {
      kind: 'sparse',
      targets: { kind: o.topk, ids: tf.tensor2d(ids, [n, k], 'int32'), logProbs: tf.tensor2d(rows.logProbs, [n, k]), temperature: fp.temperature },
    };
  }
  // Sampled: rows have different numbers of distinct ids; pad to the widest with count 0 (the loss ignores those).
  let width = 1;
  for (let r = 0; r < n; r++) width = Math.max(width, rows.offsets[r + 1] - rows.offsets[r]);
  const pid = new Int32Array(n * width);
  const pc = new Float32Array(n * width);
  const plp = new Float32Array(n * width);
  const counts = rows.counts as Int32Array;
  for (let r = 0; r < n; r++) {
    for (let i = rows.offsets[r], j = r * width; i < rows.offsets[r + 1]; i++, j++) {
      pid[j] = ids[i];
      pc[j] = counts[i];
      plp[j] = rows.logProbs[i];
    }
  }
  return {
    kind: 'sparse',
    targets: {
      kind: 'sampled',
      ids: tf.tensor2d(pid, [n, width], 'int32'),
      counts: tf.tensor2d(pc, [n, width]),
      logProbs: tf.tensor2d(plp, [n, width]),
      temperature: fp.temperature,
    },
  };
}
