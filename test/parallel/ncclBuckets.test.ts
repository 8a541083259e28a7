/**
 * The collectives' contract on CPU, with the in-process fake communicator: the bucket plan (reverse layer order,
 * whole gradients, the byte bound), the executor (the ranks' sum in every gradient, keys and order kept, the stop
 * flag riding in the last bucket, the same sums as the ring's layout), and the failure paths (a rank that fails or
 * hangs ends every rank's collective with an error naming it, within the timeout).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { planGradientBuckets } from '../../src/parallel/nccl/gradientBucketPlan.ts';
import { allReduceGradientBuckets } from '../../src/parallel/nccl/bucketedAllReduce.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import { CollectiveError } from '../../src/parallel/nccl/communicator.ts';

await tf.setBackend('cpu');

const PARAMS = [
  { name: 'model.embed_tokens.weight', shape: [8, 4] },
  { name: 'model.layers.0.self_attn.q_proj.weight', shape: [4, 4] },
  { name: 'model.layers.0.mlp.up_proj.weight', shape: [6, 4] },
  { name: 'model.layers.1.self_attn.q_proj.weight', shape: [4, 4] },
  { name: 'model.layers.1.mlp.up_proj.weight', shape: [6, 4] },
  { name: 'model.norm.weight', shape: [4] },
];
const sizeOf = (s: number[]): number => s.reduce((a, b) => a * b, 1);

/** Rank r's gradients: distinct values per rank and parameter, in the model's order. */
function gradients(rank: number): Map<string, tf.Tensor> {
  return new Map(
    PARAMS.map((p, i) => [
      p.name,
      tf.tensor(
        Float32Array.from({ length: sizeOf(p.shape) }, (_, j) => (rank + 1) * 0.5 + i * 0.01 + j * 1e-3),
        p.shape,
      ),
    ]),
  );
}

test('the bucket plan: reverse layer order, whole gradients, at most the byte bound unless one gradient is larger', () => {
  const params = PARAMS.map((p) => ({ name: p.name, size: sizeOf(p.shape) }));
  // 24 floats = 96 bytes per bucket.
  const plan = planGradientBuckets(params, 96);
  // Reversed sizes 4, 24, 16, 24, 16, 32: no two neighbours fit in 24 floats, and the embedding (32) is alone.
  assert.deepEqual(
    plan.map((b) => b.entries.map((e) => e.name)),
    params.map((p) => [p.name]).reverse(),
  );
  for (const b of plan) {
    assert.ok(b.elements * 4 <= 96 || b.entries.length === 1, `a bucket of ${b.elements * 4} bytes holds several gradients`);
    let off = 0;
    for (const e of b.entries) {
      assert.equal(e.offset, off);
      off += e.size;
    }
    assert.equal(b.elements, off);
  }
  // Packing: norm (4) + layer 1's up_proj (24) exceed 24; q_proj 16 + ... each bucket stays within 32 floats.
  const wider = planGradientBuckets(params, 32 * 4);
  assert.deepEqual(
    wider.map((b) => b.entries.map((e) => e.name.replace(/^model\./, ''))),
    [
      ['norm.weight', 'layers.1.mlp.up_proj.weight'],
      ['layers.1.self_attn.q_proj.weight'],
      ['layers.0.mlp.up_proj.weight'],
      ['layers.0.self_attn.q_proj.weight'],
      ['embed_tokens.weight'],
    ],
  );
  // One big bucket holds everything, last layer first; an empty model still has the bucket for the extras.
  const one = planGradientBuckets(params, 1 << 20);
  assert.equal(one.length, 1);
  assert.deepEqual(
    one[0].entries.map((e) => e.name),
    params.map((p) => p.name).reverse(),
  );
  assert.deepEqual(planGradientBuckets([], 1024), [{ entries: [], elements: 0 }]);
  assert.throws(() => planGradientBuckets(params, 0), /positive/);
});

test("bucketed all-reduce over 3 fake ranks: every gradient is the ranks' sum, keys and order kept, the stop flag summed", async () => {
  const group = new FakeCommunicatorGroup(3);
  const params = PARAMS.map((p) => ({ name: p.name, size: sizeOf(p.shape) }));
  const plan = planGradientBuckets(params, 32 * 4);
  const grads = [0, 1, 2].map(gradients);
  const want = PARAMS.map((p) => {
    const per = [0, 1, 2].map((r) => grads[r].get(p.name)!.dataSync());
    // Summed in rank order in float32, as the fake (and NCCL's ring for these sizes) does.
    return Float32Array.from(per[0], (_, j) => Math.fround(Math.fround(per[0][j] + per[1][j]) + per[2][j]));
  });
  const flags = await Promise.all(grads.map((g, r) => allReduceGradientBuckets(g, group.members[r], plan, [r === 1 ? 1 : 0, 2])));
  assert.deepEqual(flags, [
    [1, 6],
    [1, 6],
    [1, 6],
  ]);
  for (const g of grads) {
    assert.deepEqual(
      [...g.keys()],
      PARAMS.map((p) => p.name),
      'the map keeps its keys in the model order',
    );
    PARAMS.forEach((p, i) => {
      const t = g.get(p.name)!;
      assert.deepEqual(t.shape, p.shape);
      assert.deepEqual(t.dataSync(), want[i], `${p.name}`);
    });
  }
  // One all-reduce per bucket per rank, in the plan's order; the extras ride in the last bucket only.
  const rank0 = group.calls.filter((c) => c.rank === 0);
  assert.deepEqual(
    rank0.map((c) => c.elements),
    [...plan.slice(0, -1).map((b) => b.elements), plan[plan.length - 1].elements + 2],
  );
  assert.ok(rank0.every((c) => c.op === 'allReduceSum'));
  for (const g of grads) tf.dispose([...g.values()]);
});

test('the other collectives of the fake: all-gather in rank order, reduce-scatter by rank, grouped send/receive both ways', async () => {
  const group = new FakeCommunicatorGroup(2);
  const [a, b] = group.members;
  const x = [tf.tensor2d([[1, 2]]), tf.tensor2d([[3, 4]])];
  const gathered = await Promise.all([a.allGather(x[0]), b.allGather(x[1])]);
  for (const g of gathered) {
    assert.deepEqual(g.shape, [2, 2]);
    assert.deepEqual(Array.from(g.dataSync()), [1, 2, 3, 4]);
  }
  const y = [
    tf.tensor2d([
      [1, 1],
      [2, 2],
    ]),
    tf.tensor2d([
      [10, 10],
      [20, 20],
    ]),
  ];
  const scattered = await Promise.all([a.reduceScatter(y[0]), b.reduceScatter(y[1])]);
  assert.deepEqual(Array.from(scattered[0].dataSync()), [11, 11]);
  assert.deepEqual(Array.from(scattered[1].dataSync()), [22, 22]);
  // Both send to each other in one group: no deadlock, each gets the other's tensor.
  const swapped = await Promise.all([
    a.exchange([{ peer: 1, tensor: x[0] }], [{ peer: 1, shape: [1, 2] }]),
    b.exchange([{ peer: 0, tensor: x[1] }], [{ peer: 0, shape: [1, 2] }]),
  ]);
  assert.deepEqual(Array.from(swapped[0][0].dataSync()), [3, 4]);
  assert.deepEqual(Array.from(swapped[1][0].dataSync()), [1, 2]);
  await assert.rejects(a.reduceScatter(tf.tensor1d([1, 2, 3])), /does not divide by the group size 2/);
  tf.dispose([...x, ...y, ...gathered, ...scattered, ...swapped.flat()]);
});

test("a rank that fails mid-step ends every other rank's all-reduce with an error naming it", async () => {
  const group = new FakeCommunicatorGroup(3, 5000);
  const plan = planGradientBuckets(
    PARAMS.map((p) => ({ name: p.name, size: sizeOf(p.shape) })),
    32 * 4,
  );
  const grads = [0, 1, 2].map(gradients);
  const t0 = performance.now();
  const runs = [0, 2].map((r) => allReduceGradientBuckets(grads[r], group.members[r], plan, [0]));
  // Rank 1 reduces its first bucket, then dies (its worker threw) before the second.
  const first = grads[1];
  void group.members[1].allReduceSum(
    tf.concat([tf.reshape(first.get('model.norm.weight')!, [-1]), tf.reshape(first.get('model.layers.1.mlp.up_proj.weight')!, [-1])]),
  );
  setTimeout(() => group.members[1].abort(new Error('out of device memory')), 20);
  for (const p of runs) {
    await assert.rejects(
      p,
      (e: unknown) => e instanceof CollectiveError && e.ranks.includes(1) && /rank 1 of the group failed: out of device memory/.test(e.message),
    );
  }
  assert.ok(performance.now() - t0 < 2000, 'the failure reached the others at once, not after the timeout');
  for (const g of grads) tf.dispose([...g.values()]);
});

test("a rank that hangs (never calls the collective) ends the others' wait within the bound, naming it", async () => {
  const group = new FakeCommunicatorGroup(3, 150);
  const plan = planGradientBuckets(
    PARAMS.map((p) => ({ name: p.name, size: sizeOf(p.shape) })),
    1 << 20,
  );
  const grads = [0, 1, 2].map(gradients);
  const t0 = performance.now();
  const runs = [0, 1].map((r) => allReduceGradientBuckets(grads[r], group.members[r], plan, [0]));
  for (const p of runs) {
    await assert.rejects(
      p,
      (e: unknown) => e instanceof CollectiveError && e.ranks.length === 1 && e.ranks[0] === 2 && /rank 2 did not arrive within 150 ms/.test(e.message),
    );
  }
  const waited = performance.now() - t0;
  assert.ok(waited >= 140 && waited < 1500, `gave up after ${waited} ms, bound 150 ms`);
  for (const g of grads) tf.dispose([...g.values()]);
});

test('ranks that disagree on the order of collectives are refused, naming both', async () => {
  const group = new FakeCommunicatorGroup(2);
  const x = tf.tensor1d([1, 2]);
  const r = await Promise.allSettled([group.members[0].allReduceSum(x), group.members[1].allGather(x)]);
  assert.equal(r[1].status, 'rejected');
  assert.match(String((r[1] as PromiseRejectedResult).reason), /rank 1 called allGather while rank 0 called allReduceSum/);
  assert.equal(r[0].status, 'rejected');
  x.dispose();
});
