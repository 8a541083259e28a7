/**
 * The kernels the project registers (wasm BatchMatMul with explicit transposes, wasm UnsortedSegmentSum for the
 * embedding gradient) against the cpu backend's reference kernels on random inputs: ≤1e-5 relative; and the
 * gradients it registers (Sum, Mean) against tfjs's own composition, exactly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { relError } from '../helpers/fixtures.ts';
import { onEachBackend } from '../helpers/backends.ts';

async function onBoth<T extends tf.Tensor>(f: () => T): Promise<[Float32Array, Float32Array]> {
  await selectBackend('cpu', { log: null });
  const ref = tf.tidy(f);
  const refData = (await ref.data()) as Float32Array;
  ref.dispose();
  await selectBackend('wasm', { log: null });
  const out = tf.tidy(f);
  const outData = (await out.data()) as Float32Array;
  out.dispose();
  return [outData, refData];
}

test('wasm BatchMatMul with transposed operands matches cpu', async () => {
  for (const [ta, tb] of [
    [false, false],
    [false, true],
    [true, false],
    [true, true],
  ] as const) {
    for (const [batch, m, k, n] of [
      [1, 33, 17, 9],
      [3, 8, 64, 5],
      [2, 1, 7, 1],
    ]) {
      const f = (): tf.Tensor => {
        const a = tf.randomNormal(ta ? [batch, k, m] : [batch, m, k], 0, 1, 'float32', 11);
        const b = tf.randomNormal(tb ? [batch, n, k] : [batch, k, n], 0, 1, 'float32', 12);
        return tf.matMul(a, b, ta, tb);
      };
      const [out, ref] = await onBoth(f);
      const e = relError(out, ref);
      assert.ok(e <= 1e-5, `transposeA=${ta} transposeB=${tb} [${batch},${m},${k},${n}]: rel ${e}`);
    }
  }
});

test('wasm gradient of gather (UnsortedSegmentSum) matches cpu, repeated and out-of-order ids included', async () => {
  const f = (): tf.Tensor => {
    const table = tf.randomNormal([50, 6], 0, 1, 'float32', 3);
    const ids = tf.tensor2d(
      [
        [4, 4, 49, 0],
        [7, 4, 3, 49],
      ],
      [2, 4],
      'int32',
    );
    const r = tf.randomNormal([2, 4, 6], 0, 1, 'float32', 4);
    return tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), r)))(table);
  };
  const [out, ref] = await onBoth(f);
  assert.ok(relError(out, ref) <= 1e-6, `rel ${relError(out, ref)}`);
});

test('wasm batched BatchMatMul (split into 2-D products) matches cpu, with transposes and 4-D batches', async () => {
  for (const [ta, tb] of [
    [false, false],
    [false, true],
    [true, false],
  ] as const) {
    const f = (): tf.Tensor => {
      const a = tf.randomNormal(ta ? [2, 3, 16, 12] : [2, 3, 12, 16], 0, 1, 'float32', 21);
      const b = tf.randomNormal(tb ? [2, 3, 8, 16] : [2, 3, 16, 8], 0, 1, 'float32', 22);
      return tf.matMul(a, b, ta, tb);
    };
    const [out, ref] = await onBoth(f);
    assert.ok(relError(out, ref) <= 1e-5, `transposeA=${ta} transposeB=${tb}: rel ${relError(out, ref)}`);
  }
  // Broadcast batch dims keep the original path.
  const [out, ref] = await onBoth(() => tf.matMul(tf.randomNormal([3, 5, 4], 0, 1, 'float32', 1), tf.randomNormal([1, 4, 6], 0, 1, 'float32', 2)));
  assert.ok(relError(out, ref) <= 1e-5);
});

test('Sum and Mean gradients (broadcast on the device) equal tfjs’s own composition dy × ones, on each backend present', async () => {
  await onEachBackend(async (backend) => {
    for (const [shape, axis] of [
      [[7, 5], 1],
      [[7, 5], 0],
      [
        [3, 4, 6],
        [0, 2],
      ],
      [[3, 4, 6], -1],
      [[9], 0],
    ] as [number[], number | number[]][]) {
      const x = tf.randomNormal(shape, 0, 1, 'float32', 5);
      const axes = tf.util.parseAxisParam(axis, shape);
      const kept = shape.map((d, i) => (axes.includes(i) ? 1 : d));
      const w = tf.randomNormal(kept, 0, 1, 'float32', 6);
      for (const op of ['sum', 'mean'] as const) {
        const reduce = (t: tf.Tensor): tf.Tensor => (op === 'sum' ? tf.sum(t, axis, true) : tf.mean(t, axis, true));
        const got = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(reduce(t), w)))(x);
        // tfjs's own gradient: the upstream gradient times ones of x's shape (over the reduced size for a mean).
        const size = axes.reduce((a, i) => a * shape[i], 1);
        const want = tf.tidy(() => {
          const g = tf.mul(w, tf.ones(shape));
          return op === 'sum' ? g : tf.div(g, size);
        });
        const [a, b] = [await got.data(), await want.data()];
        for (let i = 0; i < b.length; i++) assert.equal(a[i], b[i], `${backend} ${op} over ${JSON.stringify(axis)} of [${shape}]: element ${i}`);
        got.dispose();
        want.dispose();
      }
      x.dispose();
      w.dispose();
    }
  });
});
