/**
 * Llama's RMSNorm, y = x · r · w with r = rsqrt(mean(x²) + eps) over the last axis (transformers' LlamaRMSNorm: no
 * mean subtraction, no bias), as an op: the fused kernels where the current backend registers them, tfjs's
 * composition (square, mean, add, rsqrt, mul, mul; about sixteen ops backward by autodiff) elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend; float32 throughout; the op reshapes x to two dimensions):
 * - 'RmsNorm'      inputs {x: [rows, hidden], weight: [hidden]}, attrs {eps}       → y [rows, hidden]
 *                  y[i, j] = x[i, j] · rsqrt(Σ_j x[i, j]² / hidden + eps) · weight[j]
 * - 'RmsNormGrad'  inputs {dy: [rows, hidden], x, weight}, attrs {eps}             → [dx [rows, hidden], dWeight [hidden]]
 *                  with g = dy·w and r per row as above:
 *                  dx = r·g − x · r³ · mean_j(g·x),   dWeight = Σ_rows dy·x·r
 * Only x and weight are saved from the forward (r is recomputed): keeping r would cost the forward (the teacher's
 * inference) a second output. rows ≥ 1 and hidden ≥ 1 whenever a kernel is called.
 */
import * as tf from '@tensorflow/tfjs-core';
import { checkRowParameter } from './inputChecks.ts';
import { hasKernel, runKernel } from './kernels.ts';

export const RMS_NORM_KERNEL = 'RmsNorm';
export const RMS_NORM_GRAD_KERNEL = 'RmsNormGrad';

export interface RmsNormAttrs {
  eps: number;
}

/** RMSNorm as tfjs ops: the reference the kernels are tested against, and the op where none is registered. */
export function composedRmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const ms = tf.mean(tf.square(x), x.rank - 1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), weight) as T;
  });
}

/**
 * x · rsqrt(mean(x²) + eps) · weight over the last axis, differentiable with respect to x and weight (a tf.Variable
 * included). The kernels apply to float32 x and weight with at least one element.
 */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  checkRowParameter('rmsNorm', x, 'weight', weight);
  const fits = x.dtype === 'float32' && weight.dtype === 'float32' && x.size > 0;
  if (!fits || !hasKernel(RMS_NORM_KERNEL, RMS_NORM_GRAD_KERNEL)) return composedRmsNorm(x, weight, eps);
  const hidden = weight.shape[0];
  const shape2d: [number, number] = [x.size / hidden, hidden];
  const attrs: RmsNormAttrs = { eps };
  const fused = tf.customGrad((xIn, w, save) => {
    // Reshapes move no data on the GPU backends: they share the buffer.
    const x2 = tf.reshape(xIn as tf.Tensor, shape2d);
    (save as tf.GradSaveFunc)([x2, w as tf.Tensor]);
    const y = runKernel<tf.Tensor2D>(RMS_NORM_KERNEL, { x: x2, weight: w as tf.Tensor1D }, attrs);
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) =>
        tf.tidy(() => {
          const [dx, dWeight] = runKernel<tf.Tensor[]>(RMS_NORM_GRAD_KERNEL, { dy: tf.reshape(dy, shape2d), x: xs, weight: ws }, attrs);
          return [tf.reshape(dx, x.shape), dWeight];
        }),
    };
  });
  return fused(x, weight) as T;
}
