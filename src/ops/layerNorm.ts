/**
 * GPT-2's LayerNorm, y = (x − μ) · rstd · w + b over the last axis with the biased variance and
 * rstd = rsqrt(var + eps) (torch.nn.LayerNorm), as an op: the fused kernels where the current backend registers
 * them, tfjs's composition (moments, sub, rsqrt, mul, mul, add; about twenty-six ops backward) elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend; float32 throughout; the op reshapes x to two dimensions):
 * - 'LayerNorm'      inputs {x: [rows, hidden], weight: [hidden], bias: [hidden]}, attrs {eps}  → y [rows, hidden]
 *                    μ = mean_j x, var = mean_j (x − μ)² (two reductions, as tf.moments: never E[x²] − μ², which
 *                    loses digits when |μ| is large against the spread), y = (x − μ)·rsqrt(var + eps)·w + b
 * - 'LayerNormGrad'  inputs {dy: [rows, hidden], x, weight}, attrs {eps}
 *                    → [dx [rows, hidden], dWeight [hidden], dBias [hidden]]
 *                    with g = dy·w and x̂ = (x − μ)·rstd per row:
 *                    dx = rstd · (g − mean_j(g) − x̂ · mean_j(g·x̂)),  dWeight = Σ_rows dy·x̂,  dBias = Σ_rows dy
 * Only x and weight are saved from the forward. rows ≥ 1 and hidden ≥ 1 whenever a kernel is called.
 */
import * as tf from '@tensorflow/tfjs-core';
import { checkRowParameter } from './inputChecks.ts';
import { hasKernel, runKernel } from './kernels.ts';

export const LAYER_NORM_KERNEL = 'LayerNorm';
export const LAYER_NORM_GRAD_KERNEL = 'LayerNormGrad';

export interface LayerNormAttrs {
  eps: number;
}

/** LayerNorm as tfjs ops: the reference the kernels are tested against, and the op where none is registered. */
export function composedLayerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  return tf.tidy(() => {
    const axis = x.rank - 1;
    const { mean, variance } = tf.moments(x, axis, true);
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    return tf.add(tf.mul(normed, weight), bias) as T;
  });
}

/**
 * LayerNorm over the last axis, differentiable with respect to x, weight and bias (tf.Variables included). The
 * kernels apply to float32 x, weight and bias with at least one element.
 */
export function layerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  checkRowParameter('layerNorm', x, 'weight', weight);
  checkRowParameter('layerNorm', x, 'bias', bias);
  const fits = x.dtype === 'float32' && weight.dtype === 'float32' && bias.dtype === 'float32' && x.size > 0;
  if (!fits || !hasKernel(LAYER_NORM_KERNEL, LAYER_NORM_GRAD_KERNEL)) return composedLayerNorm(x, weight, bias, eps);
  const hidden = weight.shape[0];
  const shape2d: [number, number] = [x.size / hidden, hidden];
  const attrs: LayerNormAttrs = { eps };
  const fused = tf.customGrad((xIn, w, b, save) => {
    // Reshapes move no data on the GPU backends: they share the buffer.
    const x2 = tf.reshape(xIn as tf.Tensor, shape2d);
    (save as tf.GradSaveFunc)([x2, w as tf.Tensor]);
    const y = runKernel<tf.Tensor2D>(LAYER_NORM_KERNEL, { x: x2, weight: w as tf.Tensor1D, bias: b as tf.Tensor1D }, attrs);
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) =>
        tf.tidy(() => {
          const [dx, dWeight, dBias] = runKernel<tf.Tensor[]>(LAYER_NORM_GRAD_KERNEL, { dy: tf.reshape(dy, shape2d), x: xs, weight: ws }, attrs);
          return [tf.reshape(dx, x.shape), dWeight, dBias];
        }),
    };
  });
  return fused(x, weight, bias) as T;
}
