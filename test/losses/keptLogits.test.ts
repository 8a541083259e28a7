/**
 * Logits kept from the chunked loss's forward for its backward (src/losses/chunkCache.ts): the same gradients as
 * recomputing them, two fewer head products per chunk, nothing kept without a gradient tape, nothing left after it,
 * and nothing kept at all when the logits would not fit (the memory-bounded path at Qwen's vocabulary).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { kdLossFromHidden } from '../../src/losses/chunkedKd.ts';
import { KEEP_LOGITS_BYTES, setKeptLogitsBudget, shouldKeepLogits } from '../../src/losses/chunkCache.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { onEachBackend, readAndDispose } from '../helpers/backends.ts';

function lossInputs(tokens: number, vocab: number, hidden: number) {
  return tf.tidy(() => ({
    h: tf.randomNormal([tokens, hidden], 0, 1, 'float32', 11) as tf.Tensor2D,
    w: tf.randomNormal([vocab, hidden], 0, 0.1, 'float32', 12) as tf.Tensor2D,
    th: tf.randomNormal([tokens, hidden], 0, 1, 'float32', 13) as tf.Tensor2D,
    tw: tf.randomNormal([vocab, hidden], 0, 0.1, 'float32', 14) as tf.Tensor2D,
    labels: tf.randomUniform([tokens], 0, vocab, 'int32', 15) as tf.Tensor1D,
    mask: tf.tensor1d(Array.from({ length: tokens }, (_, i) => (i % 5 === 4 ? 0 : 1))),
  }));
}

test('kept logits give the gradients of recomputed ones, with two fewer head products per chunk and no tensor left behind', async (t) => {
  await onEachBackend(async (backend) => {
    const x = lossInputs(40, 96, 16);
    const run = async (budget: number): Promise<{ grads: Float32Array[]; matMuls: number; left: number }> => {
      const previous = setKeptLogitsBudget(budget);
      try {
        const before = tf.memory().numTensors;
        let grads: tf.Tensor[] = [];
        const info = await tf.profile(() => {
          grads = tf.grads(
            (h: tf.Tensor, w: tf.Tensor) =>
              kdLossFromHidden({
                studentHidden: tf.mul(h, 1) as tf.Tensor2D,
                studentHead: w as tf.Tensor2D,
                teacherHidden: x.th,
                teacherHead: x.tw,
                labels: x.labels,
                mask: x.mask,
                options: { ...DEFAULT_KD_LOSS, kdRatio: 0.5 },
                chunkSize: 16,
              }).loss,
          )([x.h, x.w]);
          return grads;
        });
        const values = (await readAndDispose(grads)) as Float32Array[];
        return { grads: values, matMuls: info.kernels.filter((k) => k.name === 'BatchMatMul').length, left: tf.memory().numTensors - before };
      } finally {
        setKeptLogitsBudget(previous);
      }
    };
    const recomputed = await run(0);
    const kept = await run(KEEP_LOGITS_BYTES);
    for (const [i, g] of kept.grads.entries()) assert.deepEqual(g, recomputed.grads[i], `${backend}: gradient ${i} differs`);
    // 3 chunks: the student's and the teacher's head product are not redone in the backward.
    assert.equal(recomputed.matMuls - kept.matMuls, 2 * 3, `${backend}: ${recomputed.matMuls} vs ${kept.matMuls} matmuls`);
    assert.equal(kept.left, 0, `${backend}: tensors left behind`);
    assert.equal(recomputed.left, 0);
    // Without a tape nothing is kept (no backward would release it).
    const before = tf.memory().numTensors;
    const plain = kdLossFromHidden({
      studentHidden: x.h,
      studentHead: x.w,
      teacherHidden: x.th,
      teacherHead: x.tw,
      mask: x.mask,
      options: DEFAULT_KD_LOSS,
      chunkSize: 16,
    });
    tf.dispose([plain.loss, plain.kd, plain.count, ...(plain.ce ? [plain.ce] : [])]);
    assert.equal(tf.memory().numTensors, before, `${backend}: a forward without a tape kept tensors`);
    tf.dispose(Object.values(x));
    t.diagnostic(`${backend}: ${recomputed.matMuls} → ${kept.matMuls} BatchMatMul kernels, gradients bit-identical`);
  });
});

test('logits are kept whole or not at all: config M keeps, Qwen-sized vocabularies at 16k tokens recompute', () => {
  // Asked from inside a differentiated function, where the loss runs in training.
  const underTape = (rows: number, vocab: number): boolean => {
    let keeps = false;
    const x = tf.scalar(1);
    const g = tf.grad((v: tf.Tensor) => {
      keeps = shouldKeepLogits(rows, vocab);
      return tf.square(v);
    })(x);
    tf.dispose([x, g]);
    return keeps;
  };
  assert.equal(underTape(4096, 32768), true, 'config M: 2 × 512 MiB fits the 1 GiB budget');
  assert.equal(underTape(8 * 2048, 151936), false, 'V 151,936 at 16,384 tokens: 20 GB, recomputed');
  assert.equal(underTape(4097, 32768), false, 'one row over the budget keeps nothing');
  assert.equal(shouldKeepLogits(16, 96), false, 'no tape, no keeping');
});
