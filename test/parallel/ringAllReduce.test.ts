/**
 * The ring all-reduce against a plain sum: 3 ranks, array lengths that do not divide by 3 (and shorter than 3),
 * every rank ending with identical bits; gradients in buckets, with control values riding along.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { ringAllReduce } from '../../src/parallel/ringAllReduce.ts';
import { allReduceGradients } from '../../src/parallel/gradientBuckets.ts';

function random(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return (s / 2 ** 31) * 2 - 1;
  });
}

for (const length of [0, 1, 2, 10, 1001]) {
  test(`ring all-reduce over 3 ranks of ${length} values equals the plain sum, identically on every rank`, async () => {
    const ts = localTransports(3);
    const inputs = [0, 1, 2].map((r) => random(length, 17 + r * 31));
    const plain = Float32Array.from({ length }, (_, i) => inputs[0][i] + inputs[1][i] + inputs[2][i]);
    const data = inputs.map((a) => a.slice());
    await Promise.all(ts.map((t, r) => ringAllReduce(t, [0, 1, 2], data[r], 5)));
    for (let r = 0; r < 3; r++) {
      for (let i = 0; i < length; i++) assert.ok(Math.abs(data[r][i] - plain[i]) <= 1e-6, `rank ${r} value ${i}: ${data[r][i]} vs ${plain[i]}`);
      assert.deepEqual(new Uint8Array(data[r].buffer), new Uint8Array(data[0].buffer), `rank ${r} bits differ from rank 0`);
    }
  });
}

test('a ring over a group that is a subset of the workers, in another order', async () => {
  const ts = localTransports(4);
  const group = [3, 1, 2];
  const data = new Map(group.map((w) => [w, Float32Array.from({ length: 7 }, (_, i) => w * 10 + i)]));
  await Promise.all(group.map((w) => ringAllReduce(ts[w], group, data.get(w)!, 1)));
  for (const w of group) assert.deepEqual([...data.get(w)!], [60, 63, 66, 69, 72, 75, 78]);
  await assert.rejects(ringAllReduce(ts[0], group, new Float32Array(1), 1), /worker 0 is not in the group/);
});

test('gradients of uneven sizes summed in small buckets equal the plain sum; extras are summed too', async () => {
  await tf.setBackend('cpu');
  const ts = localTransports(3);
  const shapes: Record<string, number[]> = { 'b.weight': [3, 5], 'a.bias': [7], 'c.norm': [1] };
  const grads = [0, 1, 2].map(
    (r) =>
      new Map(
        Object.entries(shapes).map(([n, s], k) => [
          n,
          tf.tensor(
            random(
              s.reduce((a, b) => a * b, 1),
              r * 7 + k,
            ),
            s,
          ),
        ]),
      ),
  );
  const plain = new Map(
    [...grads[0].keys()].map((n) => [
      n,
      tf.tidy(() =>
        tf
          .addN(grads.map((g) => g.get(n)!))
          .dataSync()
          .slice(),
      ),
    ]),
  );
  // 8 bytes per bucket: two floats, so the 23 values + 1 extra span 12 buckets and cross parameter boundaries.
  const extras = await Promise.all(ts.map((t, r) => allReduceGradients(grads[r], (b, i) => ringAllReduce(t, [0, 1, 2], b, i), 8, [r === 1 ? 1 : 0])));
  for (const e of extras) assert.deepEqual(e, [1]);
  for (let r = 0; r < 3; r++) {
    for (const [n, want] of plain) {
      const got = grads[r].get(n)!;
      assert.deepEqual(got.shape, shapes[n]);
      const v = got.dataSync();
      for (let i = 0; i < want.length; i++) assert.ok(Math.abs(v[i] - want[i]) <= 1e-6, `${n}[${i}] on rank ${r}`);
    }
  }
  for (const g of grads) for (const t of g.values()) t.dispose();
});
