/**
 * The global-norm op (src/ops/globalNorm.ts) on each backend: the backend's kernel where it has one, the tfjs
 * composition elsewhere, against a float64 sum over tensors of awkward sizes (one element, sizes not divisible by
 * four, a large one), the same bits on a second call, and torch's clipping coefficient.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { globalNorm } from '../../src/ops/globalNorm.ts';
import { clipCoefficient } from '../../src/optim/clipGrad.ts';
import { onEachBackend } from '../helpers/backends.ts';

test('globalNorm is √(Σ x²) over every tensor, to float rounding, and gives the same bits twice (each backend)', async () => {
  const sizes = [1, 3, 4, 1031, 768 * 4, 300_001];
  const values = sizes.map((n, t) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + t) * (1 + (i % 7))));
  let want = 0;
  for (const v of values) for (const x of v) want += x * x;
  want = Math.sqrt(want);
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const tensors = values.map((v) => tf.tensor1d(v));
    const [a, b] = [globalNorm(tensors), globalNorm(tensors)];
    const [x, y] = await Promise.all([a.data(), b.data()]);
    assert.ok(Math.abs(x[0] - want) / want < 1e-5, `${backend}: ${x[0]} vs ${want}`);
    assert.equal(x[0], y[0], `${backend}: two calls differ`);
    tf.dispose([a, b, ...tensors]);
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test("clipCoefficient is torch's min(1, max / (norm + 1e-6)), and 1 when clipping is off or the norm is not finite", () => {
  assert.equal(clipCoefficient(5, 1), 1 / (5 + 1e-6));
  assert.equal(clipCoefficient(0.5, 1), 1);
  assert.equal(clipCoefficient(5, 0), 1);
  assert.equal(clipCoefficient(NaN, 1), 1);
  assert.equal(clipCoefficient(Infinity, 1), 1);
});
