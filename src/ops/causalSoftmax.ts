/**
 * Attention's softmax(scores · scale + causal mask) over the last axis of [batch, heads, queries, keys] scores, as
 * an op: the fused kernels where the current backend registers them (they work out from positions whether key j
 * is visible from query i, and read no mask), tfjs's mul, add, softmax on an additive mask elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend):
 * - 'CausalSoftmax'      inputs {scores: float32 [b, h, q, k], queryPositions?: int32 [q], keyPositions?: int32 [k]},
 *                        attrs {scale, window} → probs, float32 [b, h, q, k]
 * - 'CausalSoftmaxGrad'  inputs {dProbs: [b, h, q, k], probs: [b, h, q, k] (the forward's output),
 *                        queryPositions?, keyPositions?}, attrs {scale, window} → dScores [b, h, q, k]
 * Positions: query row i is at position qp(i) = queryPositions[i] and key column j at kp(j) = keyPositions[j]; without
 * the two inputs (both absent, never one), qp(i) = i and kp(j) = j (a square mask from position 0, q = k).
 * Key j is visible from query i when kp(j) ≤ qp(i) and qp(i) − kp(j) < window; window = 0x7fffffff means no
 * sliding window, and is ≥ 1 whenever a kernel is called (the op runs the composition otherwise).
 * Forward, per row over its visible keys: probs = exp(scale·s − max) / Σ exp(scale·s − max); masked entries are
 * exactly 0 (as exp(−1e9 − max) makes them in the composition). Every row has at least its own diagonal visible.
 * Backward: dScores = (dProbs·p − rowsum(dProbs·p)·p) · scale over the visible entries (that order of operations,
 * tfjs's Softmax gradient's, so the two paths agree to rounding), exactly 0 at masked entries.
 */
import * as tf from '@tensorflow/tfjs-core';
import { OpInputError } from './inputChecks.ts';
import { hasKernel, runKernel } from './kernels.ts';

export const CAUSAL_SOFTMAX_KERNEL = 'CausalSoftmax';
export const CAUSAL_SOFTMAX_GRAD_KERNEL = 'CausalSoftmaxGrad';

/** i − j < this always holds: "no window" without a branch in a kernel. */
export const NO_WINDOW = 0x7fffffff;

/** Added to masked scores: exp(−1e9 − max) is exactly 0 in float32, and unlike −Infinity it never makes NaN. */
export const MASKED = -1e9;

export interface CausalSoftmaxAttrs {
  scale: number;
  window: number;
}

/** Which keys each query sees: causal, optionally within a sliding window, at these positions. */
export interface CausalLayout {
  /** Keys this many positions or more before the query are masked too; null for plain causal attention. */
  slidingWindow: number | null;
  /** Global positions of the query rows and key columns (int32, 1-D); absent: row i and column j are positions i and j. */
  positions?: { query: tf.Tensor1D; key: tf.Tensor1D };
}

/** The additive mask [queries, keys] of `layout`: 0 where visible, MASKED elsewhere. */
export function causalMask(layout: CausalLayout, queries: number, keys: number): tf.Tensor2D {
  return tf.tidy(() => {
    const query = layout.positions ? tf.cast(layout.positions.query, 'int32') : tf.range(0, queries, 1, 'int32');
    const key = layout.positions ? tf.cast(layout.positions.key, 'int32') : tf.range(0, keys, 1, 'int32');
    const qp = tf.reshape(query, [queries, 1]);
    const kp = tf.reshape(key, [1, keys]);
    let visible = tf.lessEqual(kp, qp);
    if (layout.slidingWindow !== null) visible = tf.logicalAnd(visible, tf.less(tf.sub(qp, kp), layout.slidingWindow));
    return tf.where(visible, tf.zeros([queries, keys]), tf.fill([queries, keys], MASKED)) as tf.Tensor2D;
  });
}

/**
 * softmax(scores · scale + mask) as tfjs ops, with `mask` the additive mask of the layout (causalMask builds it):
 * the reference the kernels are tested against, and the op where none is registered.
 */
export function composedCausalSoftmax(scores: tf.Tensor4D, scale: number, mask: tf.Tensor2D): tf.Tensor4D {
  return tf.tidy(() => tf.softmax(tf.add<tf.Tensor4D>(tf.mul(scores, scale), mask)));
}

/** Whether the kernels can compute this layout's softmax: float32 rank 4, a window ≥ 1, positions that fit. */
function kernelFits(scores: tf.Tensor4D, layout: CausalLayout): boolean {
  if (scores.rank !== 4 || scores.dtype !== 'float32' || scores.size === 0) return false;
  // A window under 1 hides the diagonal too; the −1e9 composition then gives a uniform row, a kernel 0/0.
  if (layout.slidingWindow !== null && !(layout.slidingWindow >= 1)) return false;
  const [, , queries, keys] = scores.shape;
  const p = layout.positions;
  if (!p) return queries === keys;
  return p.query.dtype === 'int32' && p.key.dtype === 'int32' && p.query.size === queries && p.key.size === keys;
}

/**
 * softmax(scores · scale + causal mask of `layout`) over the last axis, differentiable with respect to `scores`
 * (the positions get no gradient). `mask`, when the caller holds the layout's additive mask already, saves the
 * composition from building it.
 */
export function causalSoftmax(scores: tf.Tensor4D, scale: number, layout: CausalLayout, mask?: tf.Tensor2D): tf.Tensor4D {
  if (scores.rank !== 4) throw new OpInputError(`causalSoftmax: scores [${scores.shape}] must be [batch, heads, queries, keys]`);
  const [, , queries, keys] = scores.shape;
  if (!kernelFits(scores, layout) || !hasKernel(CAUSAL_SOFTMAX_KERNEL, CAUSAL_SOFTMAX_GRAD_KERNEL)) {
    if (mask) return composedCausalSoftmax(scores, scale, mask);
    return tf.tidy(() => composedCausalSoftmax(scores, scale, causalMask(layout, queries, keys)));
  }
  const fused = tf.customGrad((x, save) => {
    const probs = runKernel<tf.Tensor4D>(CAUSAL_SOFTMAX_KERNEL, { scores: x as tf.Tensor4D, ...positionInputs(layout) }, kernelAttrs(scale, layout));
    (save as tf.GradSaveFunc)([probs]);
    return { value: probs, gradFunc: (dy: tf.Tensor4D, [saved]: tf.Tensor[]) => causalSoftmaxGrad(dy, saved as tf.Tensor4D, scale, layout) };
  });
  return fused(scores) as tf.Tensor4D;
}

/**
 * The backward of causalSoftmax on its own, for callers that differentiate attention by hand (recomputed core
 * attention): dScores from dProbs and the forward's probs, (dProbs·p − rowsum(dProbs·p)·p) · scale, by the kernel
 * where it is registered, else by the same ops as tfjs's Softmax gradient. Masked entries come out 0 either way,
 * since their probabilities are exactly 0.
 */
export function causalSoftmaxGrad(dProbs: tf.Tensor4D, probs: tf.Tensor4D, scale: number, layout: CausalLayout): tf.Tensor4D {
  if (kernelFits(probs, layout) && hasKernel(CAUSAL_SOFTMAX_KERNEL, CAUSAL_SOFTMAX_GRAD_KERNEL)) {
    return runKernel<tf.Tensor4D>(CAUSAL_SOFTMAX_GRAD_KERNEL, { dProbs, probs, ...positionInputs(layout) }, kernelAttrs(scale, layout));
  }
  return composedSoftmaxGrad(dProbs, probs, scale);
}

/** tfjs's Softmax gradient followed by the scale's: what composedCausalSoftmax's tape computes. */
export function composedSoftmaxGrad(dProbs: tf.Tensor4D, probs: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.tidy(() => {
    const dyTimesY = tf.mul(dProbs, probs);
    return tf.mul(tf.sub(dyTimesY, tf.mul(tf.sum(dyTimesY, -1, true), probs)), scale) as tf.Tensor4D;
  });
}

function kernelAttrs(scale: number, layout: CausalLayout): CausalSoftmaxAttrs {
  return { scale, window: layout.slidingWindow ?? NO_WINDOW };
}

function positionInputs(layout: CausalLayout): tf.NamedTensorMap {
  return layout.positions ? { queryPositions: layout.positions.query, keyPositions: layout.positions.key } : {};
}
