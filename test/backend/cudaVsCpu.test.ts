/**
 * Each kernel family of the `cuda` backend against the cpu backend on the same random inputs (skipped where no
 * CUDA device is): element-wise maths with broadcasting, reductions over contiguous and scattered axes, softmax,
 * the layout moves, gathers and scatters, TopK, and BatchMatMul in every transpose and batch form, fp32 and bf16.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { relError } from '../helpers/fixtures.ts';

let cudaHere: string | false = false;
try {
  await selectBackend('cuda', { log: null });
  cudaHere = tf.getBackend();
} catch (e) {
  cudaHere = false;
  process.stderr.write(`cuda tests skipped: ${(e as Error).message}\n`);
}
const skip = cudaHere !== 'cuda' && 'no CUDA device here';

type Case = [string, () => tf.Tensor | tf.Tensor[]];

/** Runs each case on cpu and on cuda; values must agree within `tol` relative (ints and bools exactly). */
async function compare(cases: Case[], tol = 2e-6): Promise<void> {
  const failures: string[] = [];
  for (const [name, f] of cases) {
    const results: tf.TypedArray[][] = [];
    const shapes: string[] = [];
    for (const backend of ['cpu', 'cuda'] as const) {
      await selectBackend(backend, { log: null });
      const out = tf.tidy(() => {
        const r = f();
        return Array.isArray(r) ? r : [r];
      });
      shapes.push(out.map((t) => `${t.dtype}[${t.shape}]`).join(' '));
      results.push(await Promise.all(out.map((t) => t.data() as Promise<tf.TypedArray>)));
      tf.dispose(out);
    }
    if (shapes[0] !== shapes[1]) {
      failures.push(`${name}: cpu ${shapes[0]} vs cuda ${shapes[1]}`);
      continue;
    }
    results[0].forEach((want, i) => {
      const got = results[1][i];
      const exact = !(want instanceof Float32Array);
      const zeros = want.every((v) => v === 0);
      const e = exact || zeros ? (want.length === got.length && want.every((v, j) => v === got[j]) ? 0 : 1) : relError(got, want);
      if (!(e <= (exact ? 0 : tol))) failures.push(`${name} output ${i}: rel ${e}`);
    });
  }
  assert.deepEqual(failures, []);
}

const r = (shape: number[], seed: number): tf.Tensor => tf.randomNormal(shape, 0, 1, 'float32', seed);
const ints = (shape: number[], max: number, seed: number): tf.Tensor => tf.randomUniform(shape, 0, max, 'int32', seed);

test('cuda element-wise kernels match cpu, broadcasting included', { skip }, async () => {
  const unary = [
    'neg',
    'abs',
    'exp',
    'log1p',
    'sqrt',
    'rsqrt',
    'square',
    'relu',
    'sigmoid',
    'tanh',
    'erf',
    'floor',
    'sign',
    'softplus',
    'elu',
    'reciprocal',
  ] as const;
  const cases: Case[] = unary.map((op) => [
    op,
    () => {
      const x = r([33, 17], 1);
      const pos = op === 'sqrt' || op === 'rsqrt' || op === 'log1p' ? tf.abs(x) : x;
      return (tf[op] as (t: tf.Tensor) => tf.Tensor)(pos);
    },
  ]);
  cases.push(['log', () => tf.log(tf.add(tf.abs(r([40], 2)), 0.1))]);
  cases.push(['step', () => tf.step(r([50], 3), 0.3)]);
  cases.push(['clip', () => tf.clipByValue(r([50], 3), -0.5, 0.7)]);
  cases.push(['leakyRelu', () => tf.leakyRelu(r([50], 3), 0.1)]);
  // Every broadcast kernel: same shapes, a scalar on either side, trailing axes on either side, general strides.
  for (const [a, b] of [
    [
      [4, 5],
      [4, 5],
    ],
    [[4, 5], [5]],
    [[5], [4, 5]],
    [
      [1, 5],
      [3, 4, 5],
    ],
    [
      [3, 1, 6],
      [1, 4, 1],
    ],
    [
      [2, 3, 4, 5],
      [3, 1, 5],
    ],
    [[7], []],
    [[], [7]],
    [
      [4, 1],
      [4, 5],
    ],
  ]) {
    cases.push([`add [${a}]+[${b}]`, () => tf.add(r(a, 4), r(b, 5))]);
    cases.push([`mul [${a}]*[${b}]`, () => tf.mul(r(a, 4), r(b, 5))]);
    cases.push([
      `sub/div/pow/max/min [${a}],[${b}]`,
      () => [
        tf.sub(r(a, 4), r(b, 5)),
        tf.div(r(a, 4), tf.add(tf.abs(r(b, 5)), 0.5)),
        tf.pow(tf.abs(r(a, 4)), r(b, 5)),
        tf.maximum(r(a, 4), r(b, 5)),
        tf.minimum(r(a, 4), r(b, 5)),
      ],
    ]);
    cases.push([`compare [${a}],[${b}]`, () => [tf.greater(r(a, 4), r(b, 5)), tf.lessEqual(r(a, 4), r(b, 5)), tf.equal(tf.round(r(a, 4)), tf.round(r(b, 5)))]]);
  }
  cases.push([
    'int arithmetic',
    () => [
      tf.add(ints([9], 100, 1), ints([9], 100, 2)),
      tf.mul(ints([3, 3], 10, 3), tf.scalar(3, 'int32')),
      tf.floorDiv(ints([9], 100, 1), tf.add(ints([9], 9, 2), 1)),
    ],
  ]);
  cases.push(['logical', () => [tf.logicalAnd(tf.greater(r([20], 1), 0), tf.less(r([20], 2), 0)), tf.logicalNot(tf.greater(r([20], 1), 0))]]);
  cases.push([
    'cast',
    () => [
      tf.cast(tf.mul(r([20], 1), 10), 'int32'),
      tf.cast(ints([20], 5, 1), 'float32'),
      tf.cast(ints([20], 3, 1), 'bool'),
      tf.cast(tf.greater(r([20], 1), 0), 'float32'),
    ],
  ]);
  cases.push(['where', () => tf.where(tf.greater(r([6, 7], 1), 0), r([6, 7], 2), r([6, 7], 3))]);
  cases.push(['fills', () => [tf.zerosLike(r([5, 3], 1)), tf.onesLike(ints([4], 3, 1)), tf.fill([3, 2], 2.5), tf.range(0, 10, 3), tf.range(2, 9, 2, 'int32')]]);
  cases.push(['addN', () => tf.addN([r([4, 4], 1), r([4, 4], 2), r([4, 4], 3)])]);
  await compare(cases);
});

test('cuda reductions and softmax match cpu', { skip }, async () => {
  const cases: Case[] = [];
  for (const [shape, axis] of [
    [[37, 300], 1],
    [[37, 300], 0],
    [
      [4, 5, 6],
      [0, 2],
    ],
    [
      [4, 5, 6],
      [1, 2],
    ],
    [[4, 5, 6], 1],
    [[1000], 0],
    [
      [3, 4],
      [0, 1],
    ],
  ] as [number[], number | number[]][]) {
    cases.push([
      `sum/mean/max/min [${shape}] ${JSON.stringify(axis)}`,
      () => [
        tf.sum(r(shape, 1), axis),
        tf.mean(r(shape, 1), axis, true),
        tf.max(r(shape, 1), axis),
        tf.min(r(shape, 1), axis),
        tf.prod(tf.add(tf.mul(r(shape, 1), 0.01), 1), axis),
      ],
    ]);
  }
  cases.push(['argMax/argMin', () => [tf.argMax(r([17, 500], 1), 1), tf.argMin(r([17, 5], 2), 1), tf.argMax(r([17, 5], 2), 0)]]);
  cases.push(['int sum', () => tf.sum(ints([10, 30], 50, 1), 1)]);
  cases.push(['all/any', () => [tf.all(tf.greater(r([6, 40], 1), -2), 1), tf.any(tf.greater(r([6, 40], 1), 2), 1)]]);
  cases.push(['softmax', () => [tf.softmax(r([9, 33], 1)), tf.softmax(tf.mul(r([3, 5000], 2), 10))]]);
  cases.push(['logSumExp', () => tf.logSumExp(r([9, 2000], 1), 1)]);
  await compare(cases);
});

test('cuda layout, gather, scatter and TopK kernels match cpu', { skip }, async () => {
  const cases: Case[] = [
    ['transpose', () => [tf.transpose(r([3, 4, 5], 1), [2, 0, 1]), tf.transpose(r([2, 3, 4, 5], 2), [0, 2, 1, 3]), tf.transpose(ints([6, 7], 9, 1))]],
    ['slice', () => [tf.slice(r([6, 7, 8], 1), [1, 2, 3], [3, 4, 2]), tf.slice(r([6, 7], 1), [2, 0], [3, 7]), tf.slice(r([10], 1), [4], [5])]],
    [
      'concat/stack/split',
      () => [
        tf.concat([r([2, 3], 1), r([2, 5], 2)], 1),
        tf.concat([r([2, 3], 1), r([4, 3], 2)], 0),
        tf.stack([r([3, 2], 1), r([3, 2], 2)], 1),
        ...tf.split(r([4, 9], 1), [2, 3, 4], 1),
        ...tf.unstack(r([3, 4], 1), 1),
      ],
    ],
    [
      'tile/pad/broadcastTo',
      () => [
        tf.tile(r([2, 3], 1), [3, 2]),
        tf.pad(
          r([2, 3], 1),
          [
            [1, 2],
            [0, 3],
          ],
          0.5,
        ),
        tf.broadcastTo(r([3, 1], 1), [2, 3, 4]),
      ],
    ],
    [
      'gather',
      () => [
        tf.gather(
          r([50, 6], 1),
          tf.tensor2d(
            [
              [4, 4, 49],
              [0, 7, 3],
            ],
            [2, 3],
            'int32',
          ),
        ),
        tf.gather(r([5, 6, 7], 1), tf.tensor1d([6, 0, 2], 'int32'), 2),
        tf.gather(ints([20], 100, 1), tf.tensor1d([19, 3], 'int32')),
      ],
    ],
    [
      'gatherND',
      () =>
        tf.gatherND(
          r([4, 5, 6], 1),
          tf.tensor2d(
            [
              [0, 1],
              [3, 4],
              [2, 2],
            ],
            [3, 2],
            'int32',
          ),
        ),
    ],
    ['scatterND', () => tf.scatterND(tf.tensor2d([[1], [3], [1]], [3, 1], 'int32'), r([3, 4], 1), [5, 4])],
    ['tensorScatterUpdate', () => tf.tensorScatterUpdate(r([5, 4], 1), tf.tensor2d([[1], [3]], [2, 1], 'int32'), r([2, 4], 2))],
    ['oneHot', () => [tf.oneHot(tf.tensor1d([0, 3, 9, 2], 'int32'), 10), tf.oneHot(tf.tensor2d([[1, 2]], [1, 2], 'int32'), 4, 2, -1)]],
    ['unsortedSegmentSum', () => tf.unsortedSegmentSum(r([7, 5], 1), tf.tensor1d([0, 3, 3, 1, 0, 6, 3], 'int32'), 8)],
    [
      'embedding gradient',
      () =>
        tf.grad((t: tf.Tensor) =>
          tf.sum(
            tf.mul(
              tf.gather(
                t,
                tf.tensor2d(
                  [
                    [4, 4, 49, 0],
                    [7, 4, 3, 49],
                  ],
                  [2, 4],
                  'int32',
                ),
              ),
              r([2, 4, 6], 2),
            ),
          ),
        )(r([50, 6], 1)),
    ],
    [
      'topk',
      () => {
        const x = tf.concat([r([5, 3000], 1), tf.fill([5, 3], 9)], 1);
        const { values, indices } = tf.topk(x, 8);
        return [values, indices];
      },
    ],
  ];
  await compare(cases);
});

test('cuda BatchMatMul matches cpu in every transpose and batch form; bf16-mixed within its tolerance', { skip }, async () => {
  const cases: Case[] = [];
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
      cases.push([
        `[${batch},${m},${k},${n}] ${ta}/${tb}`,
        () => tf.matMul(r(ta ? [batch, k, m] : [batch, m, k], 1), r(tb ? [batch, n, k] : [batch, k, n], 2), ta, tb),
      ]);
    }
  }
  cases.push(['2-D', () => tf.matMul(r([70, 40], 1), r([40, 30], 2))]);
  cases.push(['broadcast batch of one', () => tf.matMul(r([3, 5, 4], 1), r([1, 4, 6], 2))]);
  // (tfjs's cpu kernel mishandles batches broadcast on both sides, [2, 1] against [1, 3], so the reference is one-sided.)
  cases.push(['broadcast leading batch', () => tf.matMul(r([2, 3, 5, 4], 1), r([3, 4, 6], 2))]);
  await compare(cases, 1e-5);
  // bf16 operands, fp32 accumulation: 8 bits of mantissa per operand, errors ~2^-8 of the products' scale.
  const a = r([64, 256], 3);
  const b = r([256, 48], 4);
  await selectBackend('cpu', { log: null });
  const want = await tf.matMul(a, b).data();
  for (const precision of ['bf16-mixed', '16-mixed'] as const) {
    await selectBackend('cuda', { log: null, precision });
    const got = await tf.matMul(a, b).data();
    const e = relError(got, want);
    assert.ok(e < (precision === 'bf16-mixed' ? 8e-3 : 1e-3) && e > 1e-6, `${precision}: rel ${e} (0 would mean fp32 ran)`);
  }
  await selectBackend('cuda', { log: null, precision: '32' });
  tf.dispose([a, b]);
});

test('cuda memory: tensors free their blocks for reuse, and the pool makes no new device allocations in a steady loop', { skip }, async () => {
  await selectBackend('cuda', { log: null });
  const backend = tf.backend() as unknown as { allocator: { snapshot(): { deviceAllocations: number; inUse: number } } };
  const step = (): void => {
    tf.tidy(() => tf.sum(tf.matMul(r([256, 256], 1), r([256, 256], 2))).dataSync());
  };
  step();
  step();
  const before = backend.allocator.snapshot();
  for (let i = 0; i < 5; i++) step();
  const after = backend.allocator.snapshot();
  assert.equal(after.deviceAllocations, before.deviceAllocations, 'the steady loop allocated device memory');
  assert.equal(after.inUse, before.inUse, 'blocks leaked');
});

test("cuda bf16-mixed: the fixture models' logits stay within 2e-2 of transformers' fp32 (the stated tolerance)", { skip }, async () => {
  const { loadModel } = await import('../../src/checkpoint/load.ts');
  const { readAllSafetensors } = await import('../../src/io/safetensors.ts');
  const { fixture } = await import('../helpers/fixtures.ts');
  await selectBackend('cuda', { log: null, precision: 'bf16-mixed' });
  try {
    for (const name of ['llama-teacher', 'llama-student', 'gpt2-tiny']) {
      const expected = readAllSafetensors(fixture(name, 'expected.safetensors'));
      const ids = expected.get('input_ids')!;
      const model = await loadModel(fixture(name), { trainable: false });
      const logits = tf.tidy(() => model.logits(tf.tensor2d(Int32Array.from(ids.data as Int32Array), ids.shape as [number, number], 'int32')));
      const e = relError(await logits.data(), expected.get('logits')!.data);
      logits.dispose();
      model.dispose();
      process.stdout.write(`# bf16-mixed ${name}: relative error ${e.toExponential(2)}\n`);
      // bf16 keeps 8 bits of mantissa: well above fp32's 1e-5, well below what a wrong product would give.
      assert.ok(e < 2e-2 && e > 1e-6, `${name}: ${e}`);
    }
  } finally {
    await selectBackend('cuda', { log: null, precision: '32' });
  }
});
