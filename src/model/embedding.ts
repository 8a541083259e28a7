/**
 * Token embedding lookup. A plain `tf.gather` on the embedding variable: its gradient scatters rows with
 * UnsortedSegmentSum, which src/backend/embeddingKernels.ts registers for wasm when the backend is selected.
 *
 * Ids are checked on the host first because an out-of-range id does not fail in tfjs: gather returns zeros on
 * some backends and garbage on others, and the run would go on training on it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { DistillError } from '../errors.ts';

/** An input id outside [0, vocab): the message names the id and its position. */
export class TokenIdError extends DistillError {}

/** Checks host-side ids (row-major [batch, seq]) against the vocabulary. */
export function checkTokenIds(ids: ArrayLike<number>, seqLen: number, vocabSize: number, what = 'input_ids'): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < vocabSize) || !Number.isInteger(id)) {
      const b = Math.floor(i / seqLen);
      throw new TokenIdError(
        `${what}[${b}, ${i - b * seqLen}] = ${id} is outside the vocabulary [0, ${vocabSize}); the tokenizer does not match the model's vocab_size`,
      );
    }
  }
}

/**
 * The host copy of each ids tensor already checked, with its largest id: the teacher and the student see the same
 * ids tensor (with possibly different vocabularies), and on webgpu the second read could not be done at all (a
 * tensor the GPU has used can only be read asynchronously), so a smaller vocabulary is checked on this copy.
 */
const checked = new WeakMap<tf.Tensor, { data: Int32Array; max: number }>();

/** Checks an ids tensor, reading it once. A GPU-resident tensor that cannot be read synchronously is not checked. */
export function checkIdsTensor(ids: tf.Tensor2D, vocabSize: number): void {
  if (ids.dtype !== 'int32') throw new TokenIdError(`input_ids must be int32, got ${ids.dtype}; cast on the host before the model`);
  const known = checked.get(ids);
  if (known) {
    if (known.max >= vocabSize) checkTokenIds(known.data, ids.shape[1], vocabSize);
    return;
  }
  let data: Int32Array;
  try {
    data = ids.dataSync() as Int32Array;
  } catch {
    // webgpu in Node cannot read a GPU-produced buffer synchronously; such ids come from device ops on checked data.
    return;
  }
  checkTokenIds(data, ids.shape[1], vocabSize);
  let max = -1;
  for (let i = 0; i < data.length; i++) if (data[i] > max) max = data[i];
  checked.set(ids, { data, max });
}

/** Embeds [batch, seq] int32 ids into [batch, seq, hidden]. */
export function embed(table: tf.Tensor2D, ids: tf.Tensor2D): tf.Tensor3D {
  return tf.tidy(() => {
    const [b, t] = ids.shape;
    return tf.reshape(tf.gather(table, tf.reshape(ids, [b * t])), [b, t, table.shape[1]]);
  });
}
