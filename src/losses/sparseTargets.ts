/**
 * KD against a sparse teacher: a few (id, value) pairs per position instead of the full [V] distribution, as the
 * teacher-logit cache stores them (issue 6). Three estimators:
 *
 * - top-K renormalised: q = the teacher's top-K probabilities renormalised to sum 1; Σ_k q_k (log q_k − log p_s).
 *   Biased (drops the tail) but needs only the K values.
 * - top-K + ghost bucket: Σ_k p_t,k (log p_t,k − log p_s,k) + r_t (log r_t − log r_s), r = 1 − the top-K mass on
 *   each side: the KL between the two distributions coarsened to K + 1 outcomes (the tail as one outcome).
 * - sampled ("Sparse Logit Sampling", 2025): the cache holds the distinct ids of N draws from p_t with their counts c.
 *   −Σ (c/N)·log p_s is an unbiased estimate of the cross-entropy H(p_t, p_s) = KL(p_t ‖ p_s) + H(p_t), and its
 *   gradient an unbiased estimate of the forward KL's gradient (H(p_t) does not depend on the student). When the
 *   cache also kept log p_t of the sampled ids, Σ (c/N)·(log p_t − log p_s) is an unbiased estimate of the forward
 *   KL itself, which is the value reported then.
 *
 * All take the student's full logits (here [N, V]; chunkedSparseKd.ts computes them chunk by chunk from hidden
 * states) and are differentiable w.r.t. the student. The student's side is always the full-vocabulary softmax.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import { gatherRows } from './crossEntropy.ts';
import { logSoftmax } from './divergences.ts';

export interface TopKTargets {
  /** [N, K] int32: the teacher's K most probable ids at each position (distinct within a row). */
  ids: tf.Tensor2D;
  /** [N, K] float32: the teacher's log-probabilities of those ids, computed at `temperature`. */
  logProbs: tf.Tensor2D;
  /** The τ at which `logProbs` were computed (the cache's). */
  temperature: number;
}

export interface SampledTargets {
  /** [N, K] int32: the distinct ids drawn; rows with fewer are padded with any id and count 0. */
  ids: tf.Tensor2D;
  /** [N, K]: how many of the N draws gave each id (float32 or int32). N = the row's sum. */
  counts: tf.Tensor2D;
  /** [N, K], optional: log p_t of the sampled ids at `temperature`; makes the value an estimate of the KL. */
  logProbs?: tf.Tensor2D;
  /** The τ of the distribution the ids were drawn from. */
  temperature: number;
}

export type SparseTargets = ({ kind: 'topk_renorm' } & TopKTargets) | ({ kind: 'topk_ghost' } & TopKTargets) | ({ kind: 'sampled' } & SampledTargets);

/** The teacher's top-K ids and log-probabilities at τ, from its full logits [N, V] (what the cache would store). */
export function teacherTopK(teacherLogits: tf.Tensor2D, k: number, temperature = 1): TopKTargets {
  return tf.tidy(() => {
    const { values, indices } = tf.topk(logSoftmax(teacherLogits, temperature), k);
    return { ids: indices as tf.Tensor2D, logProbs: values as tf.Tensor2D, temperature };
  }) as TopKTargets;
}

/** Rows [start, end) of the targets, for the chunked loss. */
export function sliceTargets(t: SparseTargets, start: number, end: number): SparseTargets {
  const rows = <T extends tf.Tensor2D>(x: T): tf.Tensor2D => tf.slice(x, [start, 0], [end - start, x.shape[1]]);
  if (t.kind === 'sampled') {
    return { ...t, ids: rows(t.ids), counts: rows(t.counts), logProbs: t.logProbs ? rows(t.logProbs) : undefined };
  }
  return { ...t, ids: rows(t.ids), logProbs: rows(t.logProbs) };
}

/** Checks what can be checked without reading tensor data: shapes, and that τ matches where it must. */
export function validateSparseTargets(t: SparseTargets, rows: number, temperature: number): void {
  const [n, k] = t.ids.shape;
  const other = t.kind === 'sampled' ? t.counts : t.logProbs;
  if (n !== rows || other.shape[0] !== n || other.shape[1] !== k) {
    throw new ConfigError(`sparse KD targets (${t.kind}): ids ${t.ids.shape} and values ${other.shape} must both be [${rows}, K]`);
  }
  if (t.ids.dtype !== 'int32') throw new ConfigError(`sparse KD targets (${t.kind}): ids must be int32, got ${t.ids.dtype}`);
  // Renormalised top-K can move to any τ (the row's log-normaliser cancels); the ghost bucket needs the tail mass
  // and the sampled estimator the sampling distribution, both fixed by the τ the cache used.
  if (t.kind !== 'topk_renorm' && t.temperature !== temperature) {
    throw new ConfigError(
      `sparse KD targets (${t.kind}) were made at temperature ${t.temperature} but the loss asks for ${temperature}; ` +
        're-make the cache at that temperature or use topk_renorm',
    );
  }
}

/** [N, V] with values [N, K] placed at ids [N, K] (summed where an id repeats), zero elsewhere. */
export function scatterRows(ids: tf.Tensor2D, values: tf.Tensor2D, vocab: number): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, k] = ids.shape;
    const rowIdx = tf.tile(tf.range(0, n, 1, 'int32').reshape([n, 1]), [1, k]);
    const indices = tf.stack([rowIdx.reshape([n * k]), ids.reshape([n * k])], 1);
    return tf.scatterND(indices, values.reshape([n * k]), [n, vocab]) as tf.Tensor2D;
  });
}

/**
 * log r_s = log(1 − Σ_k p_s,k) per row [N], accurate at both ends. The value r·(log r_t − log r_s) is a
 * difference of two numbers close to each other (r ≈ 0.99 on an untrained student, the term ≈ 1e-3), so log r_s
 * needs ~1e-9 absolute accuracy: log1p(−Σ_k p_s,k) has it while the top-K mass is small, whereas logSumExp of the
 * log-probabilities outside the top-K (≈ max + log Σ, two numbers ≈ 5 cancelling) is only good to ~5e-7. When the
 * student puts most of its mass on the K ids, 1 − Σ cancels instead and the logSumExp is the stable one.
 */
function logRestMass(lpS: tf.Tensor2D, lpSk: tf.Tensor2D, ids: tf.Tensor2D): tf.Tensor1D {
  const massS = tf.sum(tf.exp(lpSk), -1);
  const excluded = scatterRows(ids, tf.fill(ids.shape, -Infinity), lpS.shape[1]);
  const viaLse = tf.logSumExp(tf.add(lpS, excluded), -1);
  const viaLog1p = tf.log1p(tf.neg(tf.minimum(massS, 0.5)));
  // The condition via step (whose gradient is 0) rather than tf.less, which has no gradient registered and would
  // stop tfjs's autodiff of this function (the tests differentiate it as the unchunked reference).
  const useLog1p = tf.cast(tf.step(tf.sub(0.5, massS)), 'bool');
  return tf.where(useLog1p, viaLog1p, viaLse) as tf.Tensor1D;
}

/**
 * The per-position value [N] and u [N, K] = p_s ⊙ ∂value/∂p_s at the target ids (zero elsewhere), from the
 * student's log-probabilities lpS [N, V] at τ. The gradient w.r.t. s = z_s/τ is then scatter(u) − p_s·Σu.
 */
function sparseTerms(lpS: tf.Tensor2D, t: SparseTargets, temperature: number): { value: tf.Tensor1D; u: tf.Tensor2D } {
  const lpSk = gatherRows(lpS, t.ids);
  switch (t.kind) {
    case 'topk_renorm': {
      const lq = logSoftmax(t.logProbs, temperature / t.temperature);
      const q = tf.exp(lq);
      return { value: tf.sum(tf.mul(q, tf.sub(lq, lpSk)), -1), u: tf.neg(q) as tf.Tensor2D };
    }
    case 'topk_ghost': {
      const pt = tf.exp(t.logProbs);
      const massT = tf.sum(pt, -1);
      // Clamped: rounding can make the stored top-K mass exceed 1 by an ulp.
      const rt = tf.relu(tf.sub(1, massT));
      const logRt = tf.log1p(tf.neg(tf.minimum(massT, 1)));
      const logRs = logRestMass(lpS, lpSk, t.ids);
      const hasRest = tf.greater(rt, 0);
      // r_t·(log r_t − log r_s) with 0·log 0 = 0 (a teacher whose top-K holds all its mass).
      const rest = tf.where(hasRest, tf.mul(rt, tf.sub(logRt, logRs)), tf.zerosLike(rt));
      const value = tf.add(tf.sum(tf.mul(pt, tf.sub(t.logProbs, lpSk)), -1), rest);
      // ∂/∂p_s,k: −p_t,k/p_s,k + r_t/r_s (r_s = 1 − Σ_k p_s,k), times p_s,k.
      const u = tf.sub(tf.mul(rt.reshape([-1, 1]), tf.exp(tf.sub(lpSk, logRs.reshape([-1, 1])))), pt) as tf.Tensor2D;
      return { value: value as tf.Tensor1D, u };
    }
    case 'sampled': {
      const counts = tf.cast(t.counts, 'float32');
      const w = tf.div(counts, tf.maximum(tf.sum(counts, -1, true), 1));
      const lpTk = t.logProbs ?? tf.zerosLike(lpSk);
      // Padding (count 0) may carry any log p_t, even −inf: select it out rather than multiply by 0.
      const diff = tf.where(tf.greater(w, 0), tf.sub(lpTk, lpSk), tf.zerosLike(lpSk));
      return { value: tf.sum(tf.mul(w, diff), -1), u: tf.neg(w) as tf.Tensor2D };
    }
  }
}

/** Per-position sparse KD [N] from the student's logits [N, V] at temperature τ. */
export function sparsePerPosition(studentLogits: tf.Tensor2D, targets: SparseTargets, temperature: number): tf.Tensor1D {
  validateSparseTargets(targets, studentLogits.shape[0], temperature);
  return tf.tidy(() => sparseTerms(logSoftmax(studentLogits, temperature), targets, temperature).value);
}

/** d value_n / d s_n [N, V], s = z_s / τ (divide by τ once more for d/dz_s). */
export function sparseGradient(studentLogits: tf.Tensor2D, targets: SparseTargets, temperature: number): tf.Tensor2D {
  return tf.tidy(() => {
    const lpS = logSoftmax(studentLogits, temperature);
    const { u } = sparseTerms(lpS, targets, temperature);
    return tf.sub(scatterRows(targets.ids, u, lpS.shape[1]), tf.mul(tf.exp(lpS), tf.sum(u, -1, true))) as tf.Tensor2D;
  });
}

/** Renormalised top-K KL per position [N]. */
export function topKRenormKl(studentLogits: tf.Tensor2D, targets: TopKTargets, temperature = 1): tf.Tensor1D {
  return sparsePerPosition(studentLogits, { kind: 'topk_renorm', ...targets }, temperature);
}

/** Top-K + ghost-bucket KL per position [N]; `targets.temperature` must equal τ. */
export function topKGhostKl(studentLogits: tf.Tensor2D, targets: TopKTargets, temperature = 1): tf.Tensor1D {
  return sparsePerPosition(studentLogits, { kind: 'topk_ghost', ...targets }, temperature);
}

/**
 * Sampled KD per position [N]: an unbiased estimate of the forward KL when `targets.logProbs` is given, else of
 * the cross-entropy H(p_t, p_s) (= forward KL + teacher entropy; same gradient). `targets.temperature` must equal τ.
 */
export function sampledKl(studentLogits: tf.Tensor2D, targets: SampledTargets, temperature = 1): tf.Tensor1D {
  return sparsePerPosition(studentLogits, { kind: 'sampled', ...targets }, temperature);
}
