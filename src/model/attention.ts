/**
 * Causal multi-head self-attention on 4-D tensors [batch, heads, seq, headDim], shared by GPT-2 and Llama.
 *
 * Everything stays 4-D: tfjs backends (webgpu above all) implement transposes of rank ≤ 4 well and rank 5 poorly
 * or not at all, so grouped-query attention repeats the KV heads with a reshape and a tile rather than a 5-D
 * broadcast.
 */
import * as tf from '@tensorflow/tfjs-core';
import { causalSoftmax, composedCausalSoftmax, MASKED, type CausalLayout } from '../ops/causalSoftmax.ts';

export type { CausalLayout };

/**
 * What each mask tensor we built means, so that attention can compute it from positions in a fused softmax kernel
 * instead of reading it; a mask not described here is always added as a tensor. Weak: a disposed and
 * dropped mask takes its entry with it.
 */
const maskLayouts = new WeakMap<tf.Tensor2D, CausalLayout>();

/** Records that `mask` is the causal mask of `layout` (0 where visible, −1e9 elsewhere), rows × columns. */
export function describeCausalMask(mask: tf.Tensor2D, layout: CausalLayout): void {
  maskLayouts.set(mask, layout);
}

/**
 * Additive causal masks [seq, seq] (0 where j ≤ i, and within the sliding window if any; −1e9 elsewhere), one per
 * sequence length and backend, built once and kept. The owning model disposes them.
 */
export class CausalMaskCache {
  private readonly masks = new Map<string, tf.Tensor2D>();

  constructor(readonly slidingWindow: number | null = null) {}

  get(seqLen: number): tf.Tensor2D {
    const key = `${tf.getBackend()}:${seqLen}`;
    let m = this.masks.get(key);
    if (!m) {
      const data = new Float32Array(seqLen * seqLen);
      const w = this.slidingWindow;
      for (let i = 0; i < seqLen; i++) {
        for (let j = 0; j < seqLen; j++) {
          const visible = j <= i && (w === null || i - j < w);
          data[i * seqLen + j] = visible ? 0 : MASKED;
        }
      }
      m = tf.keep(tf.tensor2d(data, [seqLen, seqLen]));
      describeCausalMask(m, { slidingWindow: w });
      this.masks.set(key, m);
    }
    return m;
  }

  dispose(): void {
    for (const m of this.masks.values()) m.dispose();
    this.masks.clear();
  }
}

/** [batch·seq, heads·headDim] → [batch, heads, seq, headDim]. */
export function splitHeads(x: tf.Tensor2D, batch: number, seq: number, heads: number, headDim: number): tf.Tensor4D {
  return tf.tidy(() => tf.transpose(tf.reshape(x, [batch, seq, heads, headDim]), [0, 2, 1, 3]));
}

/** [batch, heads, seq, headDim] → [batch·seq, heads·headDim]. */
export function mergeHeads(x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() => {
    const [b, h, t, d] = x.shape;
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b * t, h * d]);
  });
}

/**
 * Repeats each KV head `groups` times along the head axis (query head h reads KV head ⌊h / groups⌋, as
 * transformers' `repeat_kv`), through [b, kv, 1, t·d] → tile → [b, kv·groups, t, d] so no tensor exceeds rank 4.
 */
export function repeatKvHeads(x: tf.Tensor4D, groups: number): tf.Tensor4D {
  if (groups === 1) return x;
  return tf.tidy(() => {
    const [b, kv, t, d] = x.shape;
    const tiled = tf.tile(tf.reshape(x, [b, kv, 1, t * d]), [1, 1, groups, 1]);
    return tf.reshape(tiled, [b, kv * groups, t, d]);
  });
}

/**
 * softmax(scores · scale + mask) over the last axis of [b, heads, queries, keys] scores. For a mask whose layout
 * is described, the causalSoftmax op: where the backend registers its kernels, one forward and one backward that
 * compute the mask from positions; elsewhere (and for any other mask) tfjs's mul, add, softmax on the mask, as
 * the PyTorch fixtures were checked against.
 */
export function maskedSoftmax(scores: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  const layout = maskLayouts.get(mask);
  if (layout) return causalSoftmax(scores, scale, layout, mask);
  return composedCausalSoftmax(scores, scale, mask);
}

/**
 * softmax(q·kᵀ · scale + mask) · v. q [b, heads, t, d]; k, v [b, kvHeads, t, d] with kvHeads dividing heads.
 * @returns [b, heads, t, d]
 */
export function causalAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  return tf.tidy(() => {
    const groups = q.shape[1] / k.shape[1];
    const kr = repeatKvHeads(k, groups);
    const vr = repeatKvHeads(v, groups);
    return tf.matMul(maskedSoftmax(tf.matMul(q, kr, false, true), mask, scale), vr) as tf.Tensor4D;
  });
}
