/**
 * The memory-bounded core of every loss on hidden states. The student's logits z = hidden · headᵀ are [N, V]:
 * at N = 2048 tokens and V = 151,936 that is 1.2 GB in float32, and tfjs's gradient tape would keep several such
 * tensors alive (the logits, the log-softmax, the softmax, ...) until the backward pass. Here the forward computes
 * the loss `chunkSize` rows at a time and drops each chunk's logits at once; a tf.customGrad gradient recomputes
 * each chunk's logits in the backward pass and applies the terms' analytic gradients, so neither pass holds more
 * than a few [chunkSize, V] tensors, plus d/d head [V, h]. The price is one extra hidden · headᵀ per chunk (and
 * one teacher head product per chunk in the KD terms), paid only when all the chunks' logits would not fit in
 * chunkCache.ts's budget; below it the forward keeps them for the backward.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import { maskedMeanWeights } from './maskedMean.ts';
import { type ChunkCache, KeptLogits, RECOMPUTE, shouldKeepLogits } from './chunkCache.ts';

/**
 * One per-position loss term, evaluated on a chunk of rows [start, end) from the student's logits there.
 * The tensors it reads (teacher states, labels, targets) are listed in `tensors` and handed back as `data`, in that
 * order: in the backward pass `data` holds copies saved with the forward, because the caller's originals are often
 * made inside the closure given to tf.grads / optimizer.minimize and are disposed before the backward runs.
 */
export interface ChunkTerm {
  readonly tensors: tf.Tensor[];
  /**
   * How many per-position quantities the term gives, each a mean of its own (1 when absent). A fused pass may give
   * two from one read of the logits (the webgpu KD kernel gives the divergence and the next-token CE).
   */
  readonly width?: number;
  /**
   * The per-position values [end − start] (or [end − start, width]) from the student's logits z [end − start, V].
   * Tensors the term would recompute in `gradient` (the teacher's logits) go through `cache`, which keeps them from
   * the forward when they fit (chunkCache.ts).
   */
  value(z: tf.Tensor2D, start: number, end: number, data: tf.Tensor[], cache?: ChunkCache): tf.Tensor1D | tf.Tensor2D;
  /**
   * Σ_j d value_nj / d z_n · rowScale_nj for each row, with `rowScale` [end − start, width] (taking the scale here
   * lets a term fold it into its last op rather than hold one more [chunk, V] tensor).
   */
  gradient(z: tf.Tensor2D, start: number, end: number, rowScale: tf.Tensor2D, data: tf.Tensor[], cache?: ChunkCache): tf.Tensor2D;
}

function checkShapes(hidden: tf.Tensor2D, head: tf.Tensor2D, mask: tf.Tensor1D, chunkSize: number): void {
  if (hidden.rank !== 2 || head.rank !== 2 || hidden.shape[1] !== head.shape[1]) {
    throw new ConfigError(`chunked loss: hidden ${hidden.shape} and head ${head.shape} must be [N, h] and [V, h]`);
  }
  if (mask.rank !== 1 || mask.shape[0] !== hidden.shape[0]) {
    throw new ConfigError(`chunked loss: mask ${mask.shape} must be [${hidden.shape[0]}]`);
  }
  if (!Number.isInteger(chunkSize) || chunkSize < 1) {
    throw new ConfigError(`chunked loss: chunkSize ${chunkSize} must be a positive integer`);
  }
}

function rows<T extends tf.Tensor>(x: T, start: number, end: number): T {
  const begin = x.shape.map((_, i) => (i === 0 ? start : 0));
  const size = x.shape.map((d, i) => (i === 0 ? end - start : d));
  return tf.slice(x, begin, size) as T;
}

/** Replaces `acc` by acc + x, disposing the old sum and x (kept out of any enclosing tidy's growth). */
function accumulate<T extends tf.Tensor>(acc: T, x: T): T {
  const next = tf.add(acc, x) as T;
  acc.dispose();
  x.dispose();
  return next;
}

/**
 * [Σ widths + 1]: the masked mean over the N positions of each of the terms' values (Σ mask·value / max(Σ mask, 1)),
 * in the terms' order, then Σ mask. Differentiable w.r.t. `hidden` [N, h] and `head` [V, h] (the student's); the
 * count is not. The mask and the terms' tensors are saved for the backward pass (clones share the data: no copy).
 */
export function chunkedHeadMeans(hidden: tf.Tensor2D, head: tf.Tensor2D, mask: tf.Tensor1D, terms: ChunkTerm[], chunkSize: number): tf.Tensor1D {
  checkShapes(hidden, head, mask, chunkSize);
  const n = hidden.shape[0];
  const widths = terms.map((t) => t.width ?? 1);
  const firsts = widths.map((_, i) => widths.slice(0, i).reduce((a, b) => a + b, 0));
  const k = widths.reduce((a, b) => a + b, 0);
  const chunks: [number, number][] = [];
  for (let s = 0; s < n; s += chunkSize) chunks.push([s, Math.min(n, s + chunkSize)]);

  // The backward pass needs hidden and head, the mask and each term's tensors. Those that may be gone by then are
  // saved with the forward: the student's hidden states are usually an intermediate of the model's forward,
  // disposed when the loss closure returns. Variables (the heads, in a model) outlive the step and are not saved,
  // because saving clones, and on wasm a clone is a copy: [V, h] is 2.5 GB at V = 151,936, h = 4096.
  const offsets: number[] = [];
  const all: tf.Tensor[] = [hidden, head, mask];
  for (const t of terms) {
    offsets.push(all.length);
    all.push(...t.tensors);
  }
  const needsSaving = all.map((t) => !(t instanceof tf.Variable));
  const restore = (saved: tf.Tensor[]): tf.Tensor[] => {
    let j = 0;
    return all.map((t, i) => (needsSaving[i] ? saved[j++] : t));
  };
  const dataOf = (list: tf.Tensor[], i: number): tf.Tensor[] => list.slice(offsets[i], offsets[i] + terms[i].tensors.length);

  type Result = { value: tf.Tensor1D; gradFunc: (dy: tf.Tensor1D, saved: tf.Tensor[]) => tf.Tensor[] };
  // Keep each chunk's logits for the backward instead of recomputing them, when they fit (chunkCache.ts).
  const cache = shouldKeepLogits(n, head.shape[0]) ? new KeptLogits() : null;
  const memo: ChunkCache = cache ?? RECOMPUTE;
  let keptIds: string[] = [];
  const savedInputs = needsSaving.filter(Boolean).length;
  const run = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]): Result => {
    const [hid, wt, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
    const weights = maskedMeanWeights(mask);
    // Transposed once per pass, not once per chunk (see wasmMatMul.ts: a transposed operand costs a copy per call).
    const wtT = tf.transpose(wt) as tf.Tensor2D;
    let sums = tf.zeros([k]) as tf.Tensor1D;
    for (const [s, e] of chunks) {
      const part = tf.tidy(() => {
        const z = memo.remember(s, 'student', () => tf.matMul(rows(hid, s, e), wtT) as tf.Tensor2D);
        const wC = rows(weights, s, e);
        const keep = tf.greater(wC, 0);
        // Each term in its own tidy, so that its [chunk, V] intermediates are gone before the next starts.
        const perTerm = terms.map((t, i) =>
          tf.tidy(() => {
            const v = t.value(z, s, e, dataOf(all, i), memo);
            if (v.rank === 1) return tf.sum(tf.where(keep, tf.mul(v, wC), tf.zerosLike(wC)));
            const keepCol = keep.reshape([e - s, 1]);
            const weighted = tf.mul(v, wC.reshape([e - s, 1]));
            return tf.sum(tf.where(keepCol, weighted, tf.zerosLike(weighted)), 0);
          }),
        );
        return (widths.every((w) => w === 1) ? tf.stack(perTerm) : tf.concat(perTerm.map((p) => p.reshape([-1])))) as tf.Tensor1D;
      });
      sums = accumulate(sums, part);
    }
    wtT.dispose();
    const value = tf.concat([sums, tf.sum(mask).reshape([1])]) as tf.Tensor1D;
    // Saved once, at the end, with the logits kept for the backward (chunkCache.ts).
    const kept = cache?.take() ?? { ids: [], tensors: [] };
    keptIds = kept.ids;
    save([...all.filter((_, i) => needsSaving[i]), ...kept.tensors]);
    tf.dispose(kept.tensors);

    const gradFunc = (dy: tf.Tensor1D, savedList: tf.Tensor[]): tf.Tensor[] => {
      const saved = restore(savedList.slice(0, savedInputs));
      const memoB = KeptLogits.restore(keptIds, savedList.slice(savedInputs));
      const [hid, wt, maskB] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      const weightsB = maskedMeanWeights(maskB);
      // The upstream gradient of each mean stays on the device (no synchronous readback: webgpu in Node has none);
      // that of the count is dropped (the count is not differentiable).
      let dHead = tf.zerosLike(wt) as tf.Tensor2D;
      const dHidden: tf.Tensor2D[] = [];
      const wtT = tf.transpose(wt) as tf.Tensor2D;
      for (const [s, e] of chunks) {
        const [dh, dw] = tf.tidy(() => {
          const hC = rows(hid, s, e);
          const z = memoB.remember(s, 'student', () => tf.matMul(hC, wtT) as tf.Tensor2D);
          const wC = rows(weightsB, s, e).reshape([e - s, 1]) as tf.Tensor2D;
          const parts: tf.Tensor2D[] = [];
          for (let i = 0; i < terms.length; i++) {
            const t = terms[i];
            const g = tf.tidy(() => t.gradient(z, s, e, tf.mul(wC, tf.slice(dy, [firsts[i]], [widths[i]])) as tf.Tensor2D, dataOf(saved, i), memoB));
            parts.push(parts.length === 0 ? g : accumulate(parts.pop() as tf.Tensor2D, g));
          }
          const dzC: tf.Tensor2D = parts[0] ?? tf.zerosLike(z);
          return [tf.matMul(dzC, wt), tf.matMul(dzC, hC, true, false)] as [tf.Tensor2D, tf.Tensor2D];
        });
        dHidden.push(dh);
        dHead = accumulate(dHead, dw);
      }
      wtT.dispose();
      return [tf.concat(dHidden, 0), dHead];
    };
    return { value, gradFunc };
  });
  return run(hidden, head) as tf.Tensor1D;
}
