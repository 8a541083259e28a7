/**
 * The value encodings: our binary16 conversion against known bit patterns (round to nearest even, subnormals,
 * overflow), and the per-row uint8 affine map's error bound and exact row extremes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromHalfBits, toHalfBits, fromHalfArray, toHalfArray } from '../../src/cache/half.ts';
import { decodeValues, encodeValues, uniformOffsets } from '../../src/cache/quantize.ts';

test('binary16: known values, ties to even, subnormals, overflow', () => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65520, 0x7c00],
    [Infinity, 0x7c00],
    [2 ** -14, 0x0400],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000],
    [3 * 2 ** -25, 0x0002],
    [3 * 2 ** -26, 0x0001],
    [0.1, 0x2e66],
    [-11.3125, 0xc9a8],
    [1 + 2 ** -11, 0x3c00],
    [1 + 3 * 2 ** -11, 0x3c02],
    [2047, 0x67ff],
    [2049, 0x6800],
  ];
  for (const [x, bits] of cases) assert.equal(toHalfBits(x), bits, `toHalf(${x})`);
  assert.ok(Number.isNaN(fromHalfBits(toHalfBits(NaN))));
  for (let b = 0; b < 0x7c00; b += 37) assert.equal(toHalfBits(fromHalfBits(b)), b, `round trip of ${b.toString(16)}`);
  const xs = Float32Array.from([-3.25, 0.5, -17.75]);
  assert.deepEqual([...fromHalfArray(toHalfArray(xs))], [...xs]);
});

test('uint8 per-row affine: error ≤ half a step, row max and min kept, float16 within 2^-11 relative', () => {
  const rows = 3;
  const width = 50;
  const v = new Float32Array(rows * width);
  for (let i = 0; i < v.length; i++) v[i] = -Math.abs(Math.sin(i * 1.7)) * (1 + (i % width) / 3) - (i >= width * 2 ? 0 : 0.01);
  v.fill(-4.5, 0, width); // a constant row: scale 0
  const off = uniformOffsets(rows, width);
  const e = encodeValues(v, off, 'uint8');
  const d = decodeValues(e, off);
  for (let r = 0; r < rows; r++) {
    const row = v.subarray(r * width, (r + 1) * width);
    const step = e.scale![r];
    for (let j = 0; j < width; j++) assert.ok(Math.abs(d[r * width + j] - row[j]) <= step / 2 + 1e-6, `row ${r} entry ${j}`);
    const max = Math.max(...row);
    const at = row.indexOf(max);
    assert.ok(Math.abs(d[r * width + at] - max) <= 1e-5, `row ${r}: max kept`);
  }
  const h = decodeValues(encodeValues(v, off, 'float16'), off);
  for (let i = 0; i < v.length; i++) assert.ok(Math.abs(h[i] - v[i]) <= Math.abs(v[i]) * 2 ** -11 + 1e-7);
});
