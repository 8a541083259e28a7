/**
 * Causal multi-head self-attention on 4-D tensors [batch, heads, seq, headDim], shared by GPT-2 and Llama.
 *
 * Everything stays 4-D: tfjs backends (webgpu above all) implement transposes of rank ≤ 4 well and rank 5 poorly
 * or not at all, so grouped-query attention repeats the KV heads with a reshape and a tile rather than a 5-D
 * broadcast.
 */
import * as tf from '@tensorflow/tfjs-core';
import { causalSoftmax, causalSoftmaxGrad, composedCausalSoftmax, composedSoftmaxGrad, MASKED, type CausalLayout } from '../ops/causalSoftmax.ts';

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

/** The backward of maskedSoftmax: dScores from dProbs and its output, by the mask's layout where it is described. */
function maskedSoftmaxGrad(dProbs: tf.Tensor4D, probs: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  const layout = maskLayouts.get(mask);
  if (layout) return causalSoftmaxGrad(dProbs, probs, scale, layout);
  return composedSoftmaxGrad(dProbs, probs, scale);
}

/**
 * Sums the gradient of KV heads repeated by repeatKvHeads back onto the KV heads: [b, kv·groups, t, d] → [b, kv, t, d]
 * (the transpose of the tile).
 */
function sumRepeatedKvHeads(dx: tf.Tensor4D, groups: number): tf.Tensor4D {
  if (groups === 1) return dx;
  return tf.tidy(() => {
    const [b, h, t, d] = dx.shape;
    return tf.reshape(tf.sum(tf.reshape(dx, [b, h / groups, groups, t * d]), 2), [b, h / groups, t, d]);
  });
}

/**
 * What a training run keeps for the backward (Megatron's and NeMo's `recompute_granularity`). null: the tape keeps
 * what each op saves, attention's [heads, t, t] probabilities above all. 'selective': core attention,
 * softmax(q·kᵀ)·v, keeps only q, k and v and computes the probabilities again in the backward (at t = 8192, 3.5 GiB
 * a layer less for 14 heads, for one more q·kᵀ and softmax a layer). 'full': whole transformer layers keep only
 * their input and run their forward again in the backward (base.ts; which layers: RecomputeLayers), about one more
 * forward pass of the student a step.
 */
export type RecomputeGranularity = (typeof RECOMPUTE_GRANULARITIES)[number] | null;

/** The values `--recompute_granularity` takes (absent: null). */
export const RECOMPUTE_GRANULARITIES = ['selective', 'full'] as const;

/**
 * softmax(q·kᵀ · scale + mask) · v. q [b, heads, t, d]; k, v [b, kvHeads, t, d] with kvHeads dividing heads.
 * @returns [b, heads, t, d]
 */
export function causalAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  mask: tf.Tensor2D,
  scale: number,
  recompute: RecomputeGranularity = null,
): tf.Tensor4D {
  // Under 'full' the whole layer is recomputed (base.ts): inside it, attention keeps what the layer's tape keeps.
  if (recompute !== 'selective') return coreAttention(q, k, v, mask, scale);
  // Under customGrad the forward's ops are not taped: nothing of it outlives the call but its output and the saves.
  const recomputed = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [qi, ki, vi, save] = args;
    (save as tf.GradSaveFunc)([qi, ki, vi] as tf.Tensor[]);
    return {
      value: coreAttention(qi as tf.Tensor4D, ki as tf.Tensor4D, vi as tf.Tensor4D, mask, scale),
      gradFunc: (dOut: tf.Tensor4D, saved: tf.Tensor[]) => coreAttentionGrad(dOut, saved as tf.Tensor4D[], mask, scale),
    };
  });
  return recomputed(q, k, v) as tf.Tensor4D;
}

function coreAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  return tf.tidy(() => {
    const groups = q.shape[1] / k.shape[1];
    const kr = repeatKvHeads(k, groups);
    const vr = repeatKvHeads(v, groups);
    return tf.matMul(maskedSoftmax(tf.matMul(q, kr, false, true), mask, scale), vr) as tf.Tensor4D;
  });
}

/**
 * The gradients of coreAttention with respect to q, k and v, its probabilities computed again: with P the
 * probabilities and S the scores, dV = Pᵀ·dOut, dP = dOut·Vᵀ, dS = softmax's backward, dQ = dS·K, dK = dSᵀ·Q,
 * the products tfjs's MatMul gradients form.
 */
function coreAttentionGrad(dOut: tf.Tensor4D, [q, k, v]: tf.Tensor4D[], mask: tf.Tensor2D, scale: number): tf.Tensor[] {
  return tf.tidy(() => {
    const groups = q.shape[1] / k.shape[1];
    const kr = repeatKvHeads(k, groups);
    const vr = repeatKvHeads(v, groups);
    // The scores go as soon as the probabilities exist: one [heads, t, t] tensor fewer at the peak.
    const probs = tf.tidy(() => maskedSoftmax(tf.matMul(q, kr, false, true), mask, scale));
    const dV = tf.matMul(probs, dOut, true, false) as tf.Tensor4D;
    const dScores = tf.tidy(() => maskedSoftmaxGrad(tf.matMul(dOut, vr, false, true), probs, mask, scale));
    probs.dispose();
    const dQ = tf.matMul(dScores, kr);
    const dK = tf.matMul(dScores, q, true, false) as tf.Tensor4D;
    return [dQ, sumRepeatedKvHeads(dK, groups), sumRepeatedKvHeads(dV, groups)];
  });
}
