/**
 * The two normalisations of the supported families, written as transformers computes them in float32, so that
 * logits agree with the reference to float32 rounding.
 */
import * as tf from '@tensorflow/tfjs-core';

/** GPT-2's LayerNorm over the last axis: biased variance, eps inside the square root (torch.nn.LayerNorm). */
export function layerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const axis = x.rank - 1;
    const { mean, variance } = tf.moments(x, axis, true);
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    return tf.add(tf.mul(normed, weight), bias) as T;
  });
}

/** Llama's RMSNorm: x · rsqrt(mean(x²) + eps) · weight, with no mean subtraction and no bias (LlamaRMSNorm). */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const ms = tf.mean(tf.square(x), x.rank - 1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), weight) as T;
  });
}
