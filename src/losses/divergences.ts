/**
 * Per-position divergences between a teacher and a student distribution over the vocabulary, given logits
 * [N, V], in float32. Everything is computed from log-probabilities (logits minus their logSumExp), never from
 * probabilities that are then logged, because a probability that underflows to 0 would turn log p into −inf and
 * the loss into NaN. The analytic gradients live next to the values (divergenceGradient) so that the chunked
 * loss can recompute them one chunk at a time without tfjs's tape.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KdLossOptions } from './types.ts';

/** log softmax(z / τ) along the last axis, via logSumExp (max-shifted, so no exp overflows). */
export function logSoftmax(logits: tf.Tensor2D, temperature = 1): tf.Tensor2D {
  return tf.tidy(() => {
    const z = temperature === 1 ? logits : tf.div(logits, temperature);
    return tf.sub(z, tf.logSumExp(z, -1, true));
  });
}

/**
 * log(w·a + (1 − w)·b) from log a and log b, elementwise and stable: max + log(exp(·−max) + exp(·−max)).
 * Done pairwise rather than by stacking the two [N, V] tensors, which would double the peak memory.
 * w = 0 or 1 works: log 0 = −inf and exp(−inf) = 0.
 */
export function logMixture(logA: tf.Tensor2D, logB: tf.Tensor2D, w: number): tf.Tensor2D {
  return tf.tidy(() => {
    const a = tf.add(logA, Math.log(w));
    const b = tf.add(logB, Math.log(1 - w));
    const m = tf.maximum(a, b);
    return tf.add(m, tf.log(tf.add(tf.exp(tf.sub(a, m)), tf.exp(tf.sub(b, m)))));
  });
}

/** Σ_v p(v)·(log p(v) − log q(v)) per row, from log-probabilities. */
export function klFromLogProbs(logP: tf.Tensor2D, logQ: tf.Tensor2D): tf.Tensor1D {
  // Σ p·(log p − log q), not Σ p log p − Σ p log q: the two sums are ~ the entropy (≈ 7 nats at V = 1000) and
  // their difference ~0.02, so subtracting them would lose two digits of float32 precision.
  return tf.tidy(() => tf.sum(tf.mul(tf.exp(logP), tf.sub(logP, logQ)), -1));
}

/** Forward KL(p_t ‖ p_s) per position. */
export function forwardKl(logPt: tf.Tensor2D, logPs: tf.Tensor2D): tf.Tensor1D {
  return klFromLogProbs(logPt, logPs);
}

/** Reverse KL(p_s ‖ p_t) per position (mode-seeking). */
export function reverseKl(logPt: tf.Tensor2D, logPs: tf.Tensor2D): tf.Tensor1D {
  return klFromLogProbs(logPs, logPt);
}

/** Generalised JSD(β) = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m), m = β·p_t + (1 − β)·p_s (TRL GKD). */
export function generalizedJsd(logPt: tf.Tensor2D, logPs: tf.Tensor2D, beta: number): tf.Tensor1D {
  return tf.tidy(() => {
    const logM = logMixture(logPt, logPs, beta);
    return tf.add(tf.mul(klFromLogProbs(logPt, logM), beta), tf.mul(klFromLogProbs(logPs, logM), 1 - beta));
  });
}

/** Skew KL(λ) = KL(p_t ‖ λ·p_t + (1 − λ)·p_s) (DistiLLM); λ = 0 is the forward KL. */
export function skewKl(logPt: tf.Tensor2D, logPs: tf.Tensor2D, lambda: number): tf.Tensor1D {
  return tf.tidy(() => klFromLogProbs(logPt, logMixture(logPt, logPs, lambda)));
}

/** The divergence that `options.kind` names, from the two sides' log-probabilities at temperature τ. */
export function divergenceFromLogProbs(logPt: tf.Tensor2D, logPs: tf.Tensor2D, options: KdLossOptions): tf.Tensor1D {
  switch (options.kind) {
    case 'forward_kl':
      return forwardKl(logPt, logPs);
    case 'reverse_kl':
      return reverseKl(logPt, logPs);
    case 'jsd':
      return generalizedJsd(logPt, logPs, options.jsdBeta);
    case 'skew_kl':
      return skewKl(logPt, logPs, options.skewLambda);
  }
}

/**
 * Per-position divergence [N] between teacher and student logits [N, V], both divided by τ. Not multiplied by
 * τ² (see kdScale): the fixtures' `forward_kl_T2` is the plain KL at τ = 2.
 */
export function perPositionDivergence(teacherLogits: tf.Tensor2D, studentLogits: tf.Tensor2D, options: KdLossOptions): tf.Tensor1D {
  return tf.tidy(() => divergenceFromLogProbs(logSoftmax(teacherLogits, options.temperature), logSoftmax(studentLogits, options.temperature), options));
}

/**
 * d D_n / d s_n for each position n, where s = z_s / τ are the student's scaled logits (divide by τ once more
 * for d/dz_s). Every divergence here depends on the student only through p_s = softmax(s), so with
 * u = p_s ⊙ ∂D/∂p_s the chain rule through softmax gives d D / d s = u − p_s·Σu. Per kind:
 *   forward KL: u = −p_t                          → p_s − p_t
 *   reverse KL: u = p_s ⊙ (d + 1), d = log p_s − log p_t → p_s ⊙ (d − D)
 *   skew KL(λ): u = −(1 − λ)·p_t ⊙ p_s / m
 *   JSD(β):     u = (1 − β)·p_s ⊙ (log p_s − log m)   (the terms in 1/m cancel because β p_t + (1 − β) p_s = m)
 */
export function divergenceGradient(logPt: tf.Tensor2D, logPs: tf.Tensor2D, options: KdLossOptions): tf.Tensor2D {
  return tf.tidy(() => {
    const ps = tf.exp(logPs);
    switch (options.kind) {
      case 'forward_kl':
        return tf.sub(ps, tf.exp(logPt));
      case 'reverse_kl': {
        const d = tf.sub(logPs, logPt);
        const value = tf.sum(tf.mul(ps, d), -1, true);
        return tf.mul(ps, tf.sub(d, value));
      }
      case 'skew_kl': {
        const lambda = options.skewLambda;
        const logM = logMixture(logPt, logPs, lambda);
        const w = tf.exp(tf.sub(tf.add(tf.add(logPt, logPs), Math.log(1 - lambda)), logM));
        return tf.sub(tf.mul(ps, tf.sum(w, -1, true)), w);
      }
      case 'jsd': {
        const beta = options.jsdBeta;
        const logM = logMixture(logPt, logPs, beta);
        const u = tf.mul(tf.mul(ps, tf.sub(logPs, logM)), 1 - beta);
        return tf.sub(u, tf.mul(ps, tf.sum(u, -1, true)));
      }
    }
  });
}
