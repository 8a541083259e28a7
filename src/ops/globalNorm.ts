/**
 * The global L2 norm over many tensors, √(Σ_tensors Σ x²), as an op: what gradient clipping measures every step
 * over every gradient. The composition runs three tfjs ops per tensor (square, sum, add), about 170 ops for a
 * small model's gradients and each with its host cost; a backend that registers the kernel does it in one op.
 *
 * THE KERNEL CONTRACT (the same for every backend):
 * - 'GlobalNorm'  inputs {t0, t1, …, t(n−1)}: float32 tensors of any shapes, n ≥ 1, attrs {} → float32 scalar
 *                 √(Σ_i s_i) with s_i = Σ x² over tensor i, the s_i added in input order from 0 (the composition's
 *                 running sum). Within one tensor the order of summation is the kernel's own (float rounding), but
 *                 fixed: the same inputs give the same bits on every run.
 */
import * as tf from '@tensorflow/tfjs-core';
import { hasKernel, runKernel } from './kernels.ts';

export const GLOBAL_NORM_KERNEL = 'GlobalNorm';

/** The norm as tfjs ops: the reference the kernels are tested against, and the op where none is registered. */
export function composedGlobalNorm(tensors: Iterable<tf.Tensor>): tf.Scalar {
  return tf.tidy(() => {
    // A running sum, not tf.addN: webgpu's AddN binds every input to one shader and fails past the adapter's
    // storage-buffer limit (a model has far more parameters than that).
    let total = tf.scalar(0);
    for (const g of tensors) total = tf.add(total, tf.sum(tf.square(g)));
    return tf.sqrt(total) as tf.Scalar;
  });
}

/** √(Σ x²) over every element of every tensor (not differentiable: it measures gradients, outside any tape). */
export function globalNorm(tensors: Iterable<tf.Tensor>): tf.Scalar {
  const list = [...tensors];
  const fits = list.length > 0 && list.every((t) => t.dtype === 'float32');
  if (!fits || !hasKernel(GLOBAL_NORM_KERNEL)) return composedGlobalNorm(list);
  const inputs: tf.NamedTensorMap = {};
  list.forEach((t, i) => (inputs[`t${i}`] = t));
  return runKernel<tf.Scalar>(GLOBAL_NORM_KERNEL, inputs);
}
