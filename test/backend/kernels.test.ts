/**
 * The kernels the project registers (wasm BatchMatMul with explicit transposes, wasm UnsortedSegmentSum for the
 * embedding gradient) against the cpu backend's reference kernels on random inputs: ≤1e-5 relative.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { relError } from '../helpers/fixtures.ts';

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
  for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]] as const) {
    for (const [batch, m, k, n] of [[1, 33, 17, 9], [3, 8, 64, 5], [2, 1, 7, 1]]) {
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
    const ids = tf.tensor2d([[4, 4, 49, 0], [7, 4, 3, 49]], [2, 4], 'int32');
    const r = tf.randomNormal([2, 4, 6], 0, 1, 'float32', 4);
    return tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), r)))(table);
  };
  const [out, ref] = await onBoth(f);
  assert.ok(relError(out, ref) <= 1e-6, `rel ${relError(out, ref)}`);
});

test('wasm batched BatchMatMul (split into 2-D products) matches cpu, with transposes and 4-D batches', async () => {
  for (const [ta, tb] of [[false, false], [false, true], [true, false]] as const) {
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
