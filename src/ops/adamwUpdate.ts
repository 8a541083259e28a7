/**
 * One parameter's AdamW update as an op: the fused kernel where the current backend registers it (one pass that
 * reads p, g, m, v and writes the three new tensors, where the composition runs about a dozen element-wise ops), the
 * tfjs composition elsewhere. The composition is torch.optim.AdamW's order of operations; the kernel follows it.
 *
 * THE KERNEL CONTRACT (float32; param, grad, m and v of one shape):
 * - 'AdamWUpdate'  inputs {param, grad, m, v}, attrs {beta1, beta2, eps, decayFactor, stepSize, sqrtBc2, gradScale}
 *                  → [param', m', v'], each the shape of param:
 *                  g = grad · gradScale                   (gradient clipping's coefficient; exactly grad when 1)
 *                  decayed = param · decayFactor          (decayFactor = 1 − lr·wd, or 1 without decay)
 *                  m' = m·β1 + g·(1 − β1);   v' = v·β2 + g²·(1 − β2)
 *                  param' = decayed − (m' / (√v' / sqrtBc2 + eps)) · stepSize   (stepSize = lr / (1 − β1ᵗ))
 *                  Every constant is rounded to float32 before use, as tf.mul(x, scalar) rounds it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { hasKernel, runKernel } from './kernels.ts';

export const ADAMW_UPDATE_KERNEL = 'AdamWUpdate';

export interface AdamWUpdateAttrs {
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 − lr·wd where the parameter decays, 1 where it does not. */
  decayFactor: number;
  /** lr / (1 − β1ᵗ). */
  stepSize: number;
  /** √(1 − β2ᵗ). */
  sqrtBc2: number;
  /** Global-norm clipping's coefficient min(1, max / (norm + 1e-6)); 1 (the default) leaves the gradient as it is. */
  gradScale?: number;
}

/** The update as tfjs ops: the reference the kernels are tested against, and the op where none is registered. */
export function composedAdamWUpdate(param: tf.Tensor, unscaled: tf.Tensor, m: tf.Tensor, v: tf.Tensor, a: AdamWUpdateAttrs): [tf.Tensor, tf.Tensor, tf.Tensor] {
  return tf.tidy(() => {
    const grad = a.gradScale !== undefined && a.gradScale !== 1 ? tf.mul(unscaled, a.gradScale) : unscaled;
    const decayed = a.decayFactor !== 1 ? tf.mul(param, a.decayFactor) : param;
    const mNew = tf.add(tf.mul(m, a.beta1), tf.mul(grad, 1 - a.beta1));
    const vNew = tf.add(tf.mul(v, a.beta2), tf.mul(tf.square(grad), 1 - a.beta2));
    const denom = tf.add(tf.div(tf.sqrt(vNew), a.sqrtBc2), a.eps);
    return [tf.sub(decayed, tf.mul(tf.div(mNew, denom), a.stepSize)), mNew, vNew];
  });
}

/** [param', m', v'] for one AdamW step of one parameter (not differentiable: an optimizer runs outside any tape). */
export function adamwUpdate(param: tf.Tensor, grad: tf.Tensor, m: tf.Tensor, v: tf.Tensor, a: AdamWUpdateAttrs): [tf.Tensor, tf.Tensor, tf.Tensor] {
  const fits = [param, grad, m, v].every((t) => t.dtype === 'float32' && tf.util.arraysEqual(t.shape, param.shape)) && param.size > 0;
  if (!fits || !hasKernel(ADAMW_UPDATE_KERNEL)) return composedAdamWUpdate(param, grad, m, v, a);
  return runKernel<tf.Tensor[]>(ADAMW_UPDATE_KERNEL, { param, grad, m, v }, { ...a, gradScale: a.gradScale ?? 1 }) as [tf.Tensor, tf.Tensor, tf.Tensor];
}
