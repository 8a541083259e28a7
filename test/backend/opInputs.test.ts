/**
 * What the ops in src/ops do besides choosing a kernel: they refuse inputs no kernel or composition can work on,
 * naming the op and the tensor, and the causal softmax builds its layout's mask itself when the caller has none
 * (the kernels' reference without a model's mask cache): equal to the cached mask's composition on each backend.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import { CausalMaskCache } from '../../src/model/attention.ts';
import { causalMask, causalSoftmax, composedCausalSoftmax, MASKED } from '../../src/ops/causalSoftmax.ts';
import { OpInputError } from '../../src/ops/inputChecks.ts';
import { layerNorm } from '../../src/ops/layerNorm.ts';
import { rmsNorm } from '../../src/ops/rmsNorm.ts';
import { rotaryEmbedding } from '../../src/ops/rotaryEmbedding.ts';
import { softmaxKlBackward } from '../../src/ops/softmaxKl.ts';

test('ops refuse parameters of the wrong shape and odd head sizes, saying which tensor', () => {
  tf.tidy(() => {
    const x = tf.zeros([2, 3, 8]);
    assert.throws(
      () => rmsNorm(x, tf.ones([7]) as tf.Tensor1D, 1e-6),
      (e: Error) => e instanceof OpInputError && /rmsNorm: weight \[7\] must be \[8\]/.test(e.message),
    );
    assert.throws(() => layerNorm(x, tf.ones([8]) as tf.Tensor1D, tf.zeros([2, 8]) as unknown as tf.Tensor1D, 1e-5), /layerNorm: bias \[2,8\] must be \[8\]/);
    const odd = tf.zeros([1, 1, 2, 7]) as tf.Tensor4D;
    assert.throws(() => rotaryEmbedding(odd, tf.zeros([2, 7]) as tf.Tensor2D, tf.zeros([2, 7]) as tf.Tensor2D), /headDim even/);
    const s = tf.zeros([2, 5]) as tf.Tensor2D;
    const args = { student: s, teacher: s, kind: 'forward_kl' as const, temperature: 1, mixWeight: 0 };
    assert.throws(() => softmaxKlBackward(args, tf.zeros([2, 9]) as tf.Tensor2D, tf.zeros([2, 2]) as tf.Tensor2D), /scale \[2,2\] must be \[2, 1\]/);
    assert.throws(() => softmaxKlBackward(args, tf.zeros([2, 4]) as tf.Tensor2D, tf.zeros([2, 1]) as tf.Tensor2D), /stats \[2,4\] must be \[2, 9\]/);
  });
});

test("causal softmax without a mask: the layout's own mask, square or at positions, with a window", async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    for (const window of [null, 3]) {
      const masks = new CausalMaskCache(window);
      const cached = masks.get(6);
      const built = causalMask({ slidingWindow: window }, 6, 6);
      assert.deepEqual(Array.from(await built.data()), Array.from(await cached.data()), `${backend} window ${window}: mask`);
      const scores = tf.randomNormal([2, 3, 6, 6], 0, 3, 'float32', 4) as tf.Tensor4D;
      const got = causalSoftmax(scores, 0.5, { slidingWindow: window });
      const want = composedCausalSoftmax(scores, 0.5, cached);
      const e = relError(await got.data(), await want.data());
      assert.ok(e <= 1e-6, `${backend} window ${window}: relative error ${e}`);
      tf.dispose([built, scores, got, want]);
      masks.dispose();
    }
    // Queries 4 and 5 of a sequence against keys 0..5 (a context-parallel rank's rows).
    const query = tf.tensor1d([4, 5], 'int32');
    const key = tf.tensor1d([0, 1, 2, 3, 4, 5], 'int32');
    const mask = causalMask({ slidingWindow: 2, positions: { query, key } }, 2, 6);
    const m = MASKED;
    assert.deepEqual(Array.from(await mask.data()), [m, m, m, 0, 0, m, m, m, m, m, 0, 0]);
    tf.dispose([query, key, mask]);
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors left behind`);
  });
});
