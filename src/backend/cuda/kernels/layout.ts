/**
 * Kernels that move elements without arithmetic: Transpose, Slice, BroadcastTo (one strided gather: each output
 * element reads the input at a base offset plus its coordinates times per-axis strides), Concat (a 2-D copy per
 * input into its columns of the output), Tile and PadV2. All work on 4-byte elements whatever the dtype.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { byFour, gridFor, MAX_RANK, PRELUDE, stridesOf, stridesStruct } from './prelude.ts';

const STRIDED = 'strided_gather';
export function stridedGatherSource(): string {
  return `${PRELUDE}
extern "C" __global__ void ${STRIDED}(int *__restrict__ y, const int *__restrict__ x, i64 base, Strides s) {
  GRID_STRIDE(i, s.size) { int oa, ob, oc; offsets(s, i, oa, ob, oc); y[i] = x[base + oa]; }
}`;
}

// The same gather four elements at a time, where the innermost axis is read contiguously (a transpose that keeps
// the last axis, as attention's head split and merge do) and every offset keeps 16-byte alignment. The struct
// describes the output with its innermost axis counted in groups of four.
const STRIDED4 = 'strided_gather4';
export function stridedGather4Source(): string {
  return `${PRELUDE}
extern "C" __global__ void ${STRIDED4}(int *__restrict__ y, const int *__restrict__ x, i64 base, Strides s) {
  GRID_STRIDE4(q, s.size) { int oa, ob, oc; offsets(s, q, oa, ob, oc); int v[4]; load4(v, x + base + 4 * oa); store4(y + 4 * q, v); }
}`;
}

/** out[k] = x[base + Σ_d k_d · strides[d]] for an output of `shape`. */
export function stridedGather(backend: CudaBackend, x: tf.TensorInfo, shape: number[], strides: number[], base = 0): tf.TensorInfo {
  const out = backend.makeOutput(shape, x.dtype);
  const n = tf.util.sizeFromShape(shape);
  if (n === 0) return out;
  const zeros = shape.map(() => 0);
  const last = shape.length - 1;
  const four = last >= 0 && strides[last] === 1 && byFour(shape[last]) && byFour(base) && strides.every((st, d) => d === last || byFour(st));
  // Four at a time: the innermost axis in units of four elements, every other stride too.
  const s = four
    ? stridesStruct(
        shape.map((d, i) => (i === last ? d / 4 : d)),
        [strides.map((st, i) => (i === last ? 1 : st / 4)), zeros, zeros],
      )
    : stridesStruct(shape, [strides, zeros, zeros]);
  backend.launch({
    name: four ? STRIDED4 : STRIDED,
    source: four ? stridedGather4Source : stridedGatherSource,
    grid: gridFor(four ? n / 4 : n),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(x)), arg.i64(base), arg.ints(s)],
  });
  return out;
}

export function transpose(backend: CudaBackend, x: tf.TensorInfo, perm: number[]): tf.TensorInfo {
  const own = stridesOf(x.shape);
  return stridedGather(
    backend,
    x,
    perm.map((p) => x.shape[p]),
    perm.map((p) => own[p]),
  );
}

export function slice(backend: CudaBackend, x: tf.TensorInfo, begin: number[], size: number[]): tf.TensorInfo {
  const own = stridesOf(x.shape);
  const base = begin.reduce((acc, b, d) => acc + b * own[d], 0);
  if (tf.slice_util.isSliceContinous(x.shape, begin, size)) {
    const out = backend.makeOutput(size, x.dtype);
    backend.driver.copy(backend.ptr(out), backend.ptr(x) + BigInt(base * 4), tf.util.sizeFromShape(size) * 4);
    return out;
  }
  return stridedGather(backend, x, size, own, base);
}

export function broadcastTo(backend: CudaBackend, x: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  const own = stridesOf(x.shape);
  const lead = shape.length - x.shape.length;
  return stridedGather(
    backend,
    x,
    shape,
    shape.map((_, d) => (d < lead || x.shape[d - lead] === 1 ? 0 : own[d - lead])),
  );
}

const COPY_2D = 'copy_columns';
export function copyColumnsSource(): string {
  return `${PRELUDE}
// y[r, offset + c] = x[r, c] for x [rows, cols] and y's rows of yCols.
extern "C" __global__ void ${COPY_2D}(int *__restrict__ y, const int *__restrict__ x, int rows, int cols, int yCols, int offset) {
  GRID_STRIDE(i, (i64)rows * cols) { unsigned int r = (unsigned int)i / cols, c = (unsigned int)i % cols; y[(i64)r * yCols + offset + c] = x[i]; }
}`;
}

export function concat(backend: CudaBackend, inputs: tf.TensorInfo[], axis: number): tf.TensorInfo {
  const shape = tf.backend_util.computeOutShape(
    inputs.map((t) => t.shape),
    axis,
  );
  const dtype = inputs.map((t) => t.dtype).reduce((a, b) => tf.upcastType(a, b));
  const out = backend.makeOutput(shape, dtype);
  const rows = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const yCols = tf.util.sizeFromShape(shape) / Math.max(rows, 1);
  let offset = 0;
  for (const t of inputs) {
    const size = tf.util.sizeFromShape(t.shape);
    if (size === 0) continue;
    const cols = size / rows;
    backend.launch({
      name: COPY_2D,
      source: copyColumnsSource,
      grid: gridFor(size),
      block: 256,
      args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(t)), arg.i32(rows), arg.i32(cols), arg.i32(yCols), arg.i32(offset)],
    });
    offset += cols;
  }
  return out;
}

const TILE = 'tile';
export function tileSource(): string {
  return `${PRELUDE}
// Output coordinates k_d read the input at k_d mod its extent: Strides.out is the output shape, .a the input's
// extents, .b its strides.
extern "C" __global__ void ${TILE}(int *__restrict__ y, const int *__restrict__ x, Strides s) {
  GRID_STRIDE(i, s.size) {
    i64 r = i; int o = 0;
    for (int d = s.rank - 1; d >= 0; d--) { int k = (int)(r % s.out[d]); r /= s.out[d]; o += (k % s.a[d]) * s.b[d]; }
    y[i] = x[o];
  }
}`;
}

/** Fixed-rank struct for kernels that need the raw shape (no axis merging). */
function rawStruct(out: number[], a: number[], b: number[], c: number[] = []): number[] {
  if (out.length > MAX_RANK) throw new Error(`cuda kernel: rank ${out.length} above ${MAX_RANK}`);
  const pad = (v: number[]): number[] => [...v, ...new Array<number>(MAX_RANK - v.length).fill(0)];
  return [out.length, tf.util.sizeFromShape(out), ...pad(out), ...pad(a), ...pad(b), ...pad(c)];
}

export function tile(backend: CudaBackend, x: tf.TensorInfo, reps: number[]): tf.TensorInfo {
  const shape = x.shape.map((d, i) => d * reps[i]);
  const out = backend.makeOutput(shape, x.dtype);
  backend.launch({
    name: TILE,
    source: tileSource,
    grid: gridFor(tf.util.sizeFromShape(shape)),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(x)), arg.ints(rawStruct(shape, x.shape, stridesOf(x.shape)))],
  });
  return out;
}

const PAD = 'pad_constant';
export function padSource(): string {
  return `${PRELUDE}
// Strides.out: output shape; .a: the low padding per axis; .b: the input's extents; .c: its strides.
extern "C" __global__ void ${PAD}(int *__restrict__ y, const int *__restrict__ x, Strides s, int fillBits) {
  GRID_STRIDE(i, s.size) {
    i64 r = i; int o = 0; bool inside = true;
    for (int d = s.rank - 1; d >= 0; d--) {
      int k = (int)(r % s.out[d]) - s.a[d]; r /= s.out[d];
      if (k < 0 || k >= s.b[d]) inside = false; else o += k * s.c[d];
    }
    y[i] = inside ? x[o] : fillBits;
  }
}`;
}

export function pad(backend: CudaBackend, x: tf.TensorInfo, paddings: [number, number][], constantValue: number): tf.TensorInfo {
  const shape = x.shape.map((d, i) => paddings[i][0] + d + paddings[i][1]);
  const out = backend.makeOutput(shape, x.dtype);
  const word = Buffer.alloc(4);
  if (x.dtype === 'float32') word.writeFloatLE(constantValue);
  else word.writeInt32LE(constantValue | 0);
  backend.launch({
    name: PAD,
    source: padSource,
    grid: gridFor(tf.util.sizeFromShape(shape)),
    block: 256,
    args: [
      arg.ptr(backend.ptr(out)),
      arg.ptr(backend.ptr(x)),
      arg.ints(
        rawStruct(
          shape,
          paddings.map((p) => p[0]),
          x.shape,
          stridesOf(x.shape),
        ),
      ),
      arg.i32(word.readInt32LE(0)),
    ],
  });
  return out;
}

export function layoutSources(): { name: string; source: string }[] {
  return [
    { name: STRIDED, source: stridedGatherSource() },
    { name: STRIDED4, source: stridedGather4Source() },
    { name: COPY_2D, source: copyColumnsSource() },
    { name: TILE, source: tileSource() },
    { name: PAD, source: padSource() },
  ];
}
