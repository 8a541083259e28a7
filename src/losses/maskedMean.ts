/**
 * The reduction every loss here shares: the mean of a per-position quantity over the positions whose mask is
 * non-zero. A batch whose mask is all zero (every sequence shorter than the prompt, say) gives loss 0 and
 * count 0 rather than 0/0 = NaN, so that one empty micro-batch cannot poison the accumulated gradient.
 */
import * as tf from '@tensorflow/tfjs-core';

// A type alias rather than an interface so that tf.tidy accepts it as a TensorContainer.
export type MaskedMean = {
  /** Σ mask·value / max(Σ mask, 1): 0 when the mask is all zero. Scalar, differentiable. */
  loss: tf.Scalar;
  /** Σ mask: the number of positions that counted (a weighted count for a fractional mask). Scalar. */
  count: tf.Scalar;
};

/** Weights w_n = mask_n / max(Σ mask, 1), so that Σ w_n·value_n is the masked mean. [N]. */
export function maskedMeanWeights(mask: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => tf.div(mask, tf.maximum(tf.sum(mask), 1)));
}

/**
 * Masked mean of `values` [N] under `mask` [N] (float32, 1 = counts). Positions with mask 0 are selected out
 * with `where` rather than multiplied by 0, so a NaN or ±inf there (an ignored label, a padded row) cannot leak.
 */
export function maskedMean(values: tf.Tensor1D, mask: tf.Tensor1D): MaskedMean {
  return tf.tidy(() => {
    const count = tf.sum(mask);
    const kept = tf.where(tf.greater(mask, 0), tf.mul(values, mask), tf.zerosLike(values));
    const loss = tf.div(tf.sum(kept), tf.maximum(count, 1)) as tf.Scalar;
    return { loss, count: count as tf.Scalar };
  });
}
