/**
 * The MLP activations the configs name. `gelu_new` is GPT-2's tanh approximation (transformers' NewGELUActivation);
 * tfjs's own gelu is not used because the reference is the tanh form, and the two differ by ~1e-3.
 * Gated MLPs (Llama's act_fn(gate_proj(x)) · up_proj(x)) go through `gatedActivation`; silu's, SwiGLU, is an op
 * (src/ops/swiglu.ts): one fused kernel where the backend registers it.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Activation } from './config.ts';
import { swiglu } from '../ops/swiglu.ts';

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/** 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function geluNew<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), SQRT_2_OVER_PI);
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1)) as T;
  });
}

/** Exact gelu, 0.5·x·(1 + erf(x/√2)), as torch's default nn.GELU. */
export function geluErf<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as T);
}

export function activate<T extends tf.Tensor>(name: Activation, x: T): T {
  switch (name) {
    case 'gelu_new':
      return geluNew(x);
    case 'gelu':
      return geluErf(x);
    case 'relu':
      return tf.relu(x);
    case 'silu':
      return tf.tidy(() => tf.mul(x, tf.sigmoid(x)) as T);
  }
}

/** activation(gate) · up, the gated MLP's product. */
export function gatedActivation<T extends tf.Tensor>(name: Activation, gate: T, up: T): T {
  if (name === 'silu') return swiglu(gate, up);
  return tf.tidy(() => tf.mul(activate(name, gate), up) as T);
}
