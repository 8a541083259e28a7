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
