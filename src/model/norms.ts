/**
 * The two normalisations of the supported families, written as transformers computes them in float32, so that
 * logits agree with the reference to float32 rounding. On webgpu each runs as our fused kernels (one dispatch
 * forward instead of 6–10, 3–4 backward instead of 16–26); elsewhere as the tfjs compositions below.
 */
import * as tf from '@tensorflow/tfjs-core';
import { fusedLayerNorm, fusedLayerNormApplies } from '../backend/webgpu/layerNorm.ts';
import { fusedRmsNorm, fusedRmsNormApplies } from '../backend/webgpu/rmsNorm.ts';

/** GPT-2's LayerNorm over the last axis: biased variance, eps inside the square root (torch.nn.LayerNorm). */
export function layerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  if (fusedLayerNormApplies(x, weight, bias)) return fusedLayerNorm(x, weight, bias, eps);
  return composedLayerNorm(x, weight, bias, eps);
}

/** LayerNorm as tfjs ops, the reference the fused kernels are tested against. */
export function composedLayerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const axis = x.rank - 1;
    const { mean, variance } = tf.moments(x, axis, true);
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    return tf.add(tf.mul(normed, weight), bias) as T;
  });
}

/** Llama's RMSNorm: x · rsqrt(mean(x²) + eps) · weight, with no mean subtraction and no bias (LlamaRMSNorm). */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  if (fusedRmsNormApplies(x, weight)) return fusedRmsNorm(x, weight, eps);
  return composedRmsNorm(x, weight, eps);
}

/** RMSNorm as tfjs ops, the reference the fused kernels are tested against. */
export function composedRmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const ms = tf.mean(tf.square(x), x.rank - 1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), weight) as T;
  });
}
