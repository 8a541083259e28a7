/**
 * The SwiGLU product of Llama's MLP, silu(gate) · up = gate · σ(gate) · up, as an op: the fused kernels where the
 * current backend registers them, tfjs's composition (sigmoid, mul, mul; about eight ops backward) elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend; float32; gate and up of one shape, any rank):
 * - 'Swiglu'      inputs {gate, up}        → gate · σ(gate) · up, the shape of gate
 * - 'SwigluGrad'  inputs {dy, gate, up}    → [dGate, dUp], each the shape of gate
 *                 dGate = dy · up · σ · (1 + gate · (1 − σ)),   dUp = dy · gate · σ
 * σ is computed as tfjs's sigmoid, 1 / (1 + exp(−g)), so that kernel and composition round alike.
 */
import * as tf from '@tensorflow/tfjs-core';
import { hasKernel, runKernel } from './kernels.ts';

export const SWIGLU_KERNEL = 'Swiglu';
export const SWIGLU_GRAD_KERNEL = 'SwigluGrad';

/** silu(gate) · up as tfjs ops (broadcasting as tf.mul does): the reference the kernels are tested against. */
export function composedSwiglu<T extends tf.Tensor>(gate: T, up: T): T {
  return tf.tidy(() => tf.mul(tf.mul(gate, tf.sigmoid(gate)), up) as T);
}

/**
 * silu(gate) · up, differentiable with respect to both. The kernels apply to float32 gate and up of one shape with
 * at least one element; other shapes broadcast through the composition.
 */
export function swiglu<T extends tf.Tensor>(gate: T, up: T): T {
  const fits = gate.dtype === 'float32' && up.dtype === 'float32' && gate.size > 0 && tf.util.arraysEqual(gate.shape, up.shape);
  if (!fits || !hasKernel(SWIGLU_KERNEL, SWIGLU_GRAD_KERNEL)) return composedSwiglu(gate, up);
  const fused = tf.customGrad((g, u, save) => {
    (save as tf.GradSaveFunc)([g as tf.Tensor, u as tf.Tensor]);
    return {
      value: runKernel<T>(SWIGLU_KERNEL, { gate: g as tf.Tensor, up: u as tf.Tensor }),
      gradFunc: (dy: T, [gs, us]: tf.Tensor[]) => runKernel<tf.Tensor[]>(SWIGLU_GRAD_KERNEL, { dy, gate: gs, up: us }),
    };
  });
  return fused(gate, up) as T;
}
