/**
 * The student's own cross-entropy on the next token. A causal LM's logits at position i predict token i + 1, so
 * the label of position i is input_ids[i + 1] and the position counts when the mask of i + 1 does (the token being
 * predicted is the one that must be a real, unpadded target). The last position has no next token: mask 0.
 */
import * as tf from '@tensorflow/tfjs-core';
import { maskedMean, type MaskedMean } from './maskedMean.ts';

/** Gathers x[n, ids[n, k]] from x [N, V] and ids [N, K] (int32) as [N, K]; differentiable w.r.t. x. */
export function gatherRows(x: tf.Tensor2D, ids: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, v] = x.shape;
    const k = ids.shape[1];
    // A flat 1-D gather: its gradient (unsortedSegmentSum) exists on every backend, unlike batchDims gathers.
    const rowBase = tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(v, 'int32')).reshape([n, 1]);
    const flat = tf.add(rowBase, ids).reshape([n * k]);
    return tf.gather(x.reshape([n * v]), flat).reshape([n, k]) as tf.Tensor2D;
  });
}

/** −log softmax(z)[label] = logSumExp(z) − z[label] per row: [N] from logits [N, V] and labels [N] (int32). */
export function tokenCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const picked = gatherRows(logits, labels.reshape([labels.shape[0], 1])).reshape([labels.shape[0]]);
    return tf.sub(tf.logSumExp(logits, -1), picked) as tf.Tensor1D;
  });
}

/**
 * (softmax(z_n) − onehot(label_n))·scale_n: d CE_n / d z_n times a per-row scale [N, 1] (1 when absent), [N, V].
 * Written so that at most two [N, V] tensors besides z are alive at once (the chunked loss's memory peak): the
 * scaled softmax, then a copy with the label entries lowered by the scale (tensorScatterUpdate), rather than a dense
 * one-hot (which on wasm 4.22 is also wrong when asked for float32: its OneHot writes integer bits).
 */
export function tokenCrossEntropyGradient(logits: tf.Tensor2D, labels: tf.Tensor1D, scale?: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const n = labels.shape[0];
    const sm = tf.softmax(logits);
    const scaled = scale ? tf.mul(sm, scale) : sm;
    if (scale) sm.dispose();
    const indices = tf.concat([tf.range(0, n, 1, 'int32').reshape([n, 1]), labels.reshape([n, 1])], 1);
    // gatherNd reads the [N, V] tensor in place; gatherRows' flattening reshape is a copy on wasm.
    const atLabel = tf.gatherND(scaled, indices) as tf.Tensor1D;
    const lowered = tf.sub(atLabel, scale ? scale.reshape([n]) : 1);
    const out = tf.tensorScatterUpdate(scaled, indices, lowered);
    scaled.dispose();
    return out as tf.Tensor2D;
  });
}

export interface NextTokenTargets {
  /** [B·S] int32: input_ids shifted left by one; the last position of each row gets 0 (masked out). */
  labels: tf.Tensor1D;
  /** [B·S] float32: the mask shifted left by one; the last position of each row is 0. */
  mask: tf.Tensor1D;
}

/** Labels and mask for next-token prediction, flattened to [B·S] to line up with logits reshaped to [B·S, V]. */
export function nextTokenTargets(inputIds: tf.Tensor2D, mask: tf.Tensor2D): NextTokenTargets {
  return tf.tidy(() => {
    const [b, s] = inputIds.shape;
    const ids = inputIds.dtype === 'int32' ? inputIds : tf.cast(inputIds, 'int32');
    const labels = tf.concat([tf.slice(ids, [0, 1], [b, s - 1]), tf.zeros([b, 1], 'int32')], 1);
    const m = tf.concat([tf.slice(tf.cast(mask, 'float32'), [0, 1], [b, s - 1]), tf.zeros([b, 1])], 1);
    return { labels: labels.reshape([b * s]) as tf.Tensor1D, mask: m.reshape([b * s]) as tf.Tensor1D };
  });
}

/** Masked mean next-token cross-entropy of logits [B, S, V] against input_ids [B, S] under mask [B, S]. */
export function nextTokenCrossEntropy(logits: tf.Tensor3D, inputIds: tf.Tensor2D, mask: tf.Tensor2D): MaskedMean {
  return tf.tidy(() => {
    const [b, s, v] = logits.shape;
    const t = nextTokenTargets(inputIds, mask);
    return maskedMean(tokenCrossEntropy(logits.reshape([b * s, v]), t.labels), t.mask);
  });
}
