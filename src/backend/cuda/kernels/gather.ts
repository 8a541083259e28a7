/**
 * Indexed reads and writes: GatherV2 (embedding lookups), GatherNd, OneHot, and the scatters whose sums
 * (UnsortedSegmentSum: the embedding gradient; ScatterNd) use atomicAdd, so their float sums may differ in the
 * last bit between runs. Ids out of range read zeros and write nothing (tfjs's cpu kernel throws instead; the
 * model checks its ids before the lookup).
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { cType, gridFor, PRELUDE } from './prelude.ts';
import { fill, copy } from './elementwise.ts';

export function gatherSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
// x viewed as [batch, outer, dim, inner], ids as [batch, n]; y[b, o, k, j] = x[b, o, ids[b, k], j].
extern "C" __global__ void ${name}(${t} *__restrict__ y, const ${t} *__restrict__ x, const int *__restrict__ ids, int batch, int outer, int dim, int inner, int n) {
  GRID_STRIDE(i, (i64)batch * outer * n * inner) {
    unsigned int r = (unsigned int)i; int j = (int)(r % inner); r /= inner; int k = (int)(r % n); r /= n; int o = (int)(r % outer); int b = (int)(r / outer);
    int id = ids[(i64)b * n + k];
    y[i] = (id >= 0 && id < dim) ? x[(((i64)b * outer + o) * dim + id) * inner + j] : (${t})0;
  }
}`;
}

export function gatherV2(backend: CudaBackend, x: tf.TensorInfo, indices: tf.TensorInfo, axis: number, batchDims: number): tf.TensorInfo {
  const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(x as tf.Tensor, indices as tf.Tensor, axis, batchDims);
  const out = backend.makeOutput(info.outputShape, x.dtype);
  const t = cType(x.dtype);
  const name = `gather_${t}`;
  const n = tf.util.sizeFromShape(indices.shape) / info.batchSize;
  backend.launch({
    name,
    source: () => gatherSource(name, t),
    grid: gridFor(tf.util.sizeFromShape(info.outputShape)),
    block: 256,
    args: [
      arg.ptr(backend.ptr(out)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(indices)),
      arg.i32(info.batchSize),
      arg.i32(info.outerSize),
      arg.i32(info.dimSize),
      arg.i32(info.sliceSize),
      arg.i32(n),
    ],
  });
  return out;
}

export function gatherNdSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
// ids [slices, depth] address slices of sliceSize elements at Σ ids·strides (strides counted in slices).
extern "C" __global__ void ${name}(${t} *__restrict__ y, const ${t} *__restrict__ x, const int *__restrict__ ids, int slices, int depth, int sliceSize, Strides s, int xSize) {
  GRID_STRIDE(i, (i64)slices * sliceSize) {
    int k = (int)(i / sliceSize), j = (int)(i % sliceSize);
    i64 at = 0; bool ok = true;
    for (int d = 0; d < depth; d++) { int v = ids[(i64)k * depth + d]; if (v < 0 || v >= s.out[d]) ok = false; at += (i64)v * s.a[d]; }
    y[i] = (ok && at * sliceSize + j < xSize) ? x[at * sliceSize + j] : (${t})0;
  }
}`;
}

function ndStruct(extents: number[], strides: number[]): number[] {
  const pad = (v: number[]): number[] => [...v, ...new Array<number>(8 - v.length).fill(0)];
  return [extents.length, 0, ...pad(extents), ...pad(strides), ...pad([]), ...pad([])];
}

export function gatherNd(backend: CudaBackend, params: tf.TensorInfo, indices: tf.TensorInfo): tf.TensorInfo {
  const [resultShape, numSlices, sliceSize, strides] = tf.backend_util.prepareAndValidate(params as tf.Tensor, indices as tf.Tensor);
  const depth = indices.shape[indices.shape.length - 1];
  const out = backend.makeOutput(resultShape, params.dtype);
  const t = cType(params.dtype);
  const name = `gather_nd_${t}`;
  backend.launch({
    name,
    source: () => gatherNdSource(name, t),
    grid: gridFor(numSlices * sliceSize),
    block: 256,
    args: [
      arg.ptr(backend.ptr(out)),
      arg.ptr(backend.ptr(params)),
      arg.ptr(backend.ptr(indices)),
      arg.i32(numSlices),
      arg.i32(depth),
      arg.i32(sliceSize),
      arg.ints(ndStruct(params.shape.slice(0, depth), strides)),
      arg.i32(tf.util.sizeFromShape(params.shape)),
    ],
  });
  return out;
}

export function scatterSource(name: string, t: 'float' | 'int', accumulate: boolean): string {
  const write = accumulate ? 'atomicAdd(&y[at * sliceSize + j], u[i]);' : 'y[at * sliceSize + j] = u[i];';
  return `${PRELUDE}
// updates [n, sliceSize] go to the slices that ids [n, depth] address in y (Strides.out: y's leading extents, .a: strides).
extern "C" __global__ void ${name}(${t} *__restrict__ y, const ${t} *__restrict__ u, const int *__restrict__ ids, int n, int depth, int sliceSize, Strides s) {
  GRID_STRIDE(i, (i64)n * sliceSize) {
    int k = (int)(i / sliceSize), j = (int)(i % sliceSize);
    i64 at = 0; bool ok = true;
    for (int d = 0; d < depth; d++) { int v = ids[(i64)k * depth + d]; if (v < 0 || v >= s.out[d]) ok = false; at += (i64)v * s.a[d]; }
    if (ok) { ${write} }
  }
}`;
}

function scatter(backend: CudaBackend, target: tf.TensorInfo, indices: tf.TensorInfo, updates: tf.TensorInfo, shape: number[], accumulate: boolean): void {
  const { sliceRank, numUpdates, sliceSize, strides } = tf.backend_util.calculateShapes(updates as tf.Tensor, indices as tf.Tensor, shape);
  const t = cType(updates.dtype);
  const name = `scatter_${accumulate ? 'add' : 'set'}_${t}`;
  backend.launch({
    name,
    source: () => scatterSource(name, t, accumulate),
    grid: gridFor(numUpdates * sliceSize),
    block: 256,
    args: [
      arg.ptr(backend.ptr(target)),
      arg.ptr(backend.ptr(updates)),
      arg.ptr(backend.ptr(indices)),
      arg.i32(numUpdates),
      arg.i32(sliceRank),
      arg.i32(sliceSize),
      arg.ints(ndStruct(shape.slice(0, sliceRank), strides)),
    ],
  });
}

/** ScatterNd: zeros of `shape` with the updates summed in (duplicates add, as tfjs's). */
export function scatterNd(backend: CudaBackend, indices: tf.TensorInfo, updates: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  const out = fill(backend, shape, 0, updates.dtype);
  scatter(backend, out, indices, updates, shape, true);
  return out;
}

/** TensorScatterUpdate: a copy of `tensor` with the addressed slices replaced. */
export function tensorScatterUpdate(backend: CudaBackend, tensor: tf.TensorInfo, indices: tf.TensorInfo, updates: tf.TensorInfo): tf.TensorInfo {
  const out = copy(backend, tensor);
  scatter(backend, out, indices, updates, tensor.shape, false);
  return out;
}

export function segmentSumSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
// x [n, inner] summed into y [segments, inner] by segment id.
extern "C" __global__ void ${name}(${t} *__restrict__ y, const ${t} *__restrict__ x, const int *__restrict__ ids, int n, int inner, int segments) {
  GRID_STRIDE(i, (i64)n * inner) {
    int k = (int)((unsigned int)i / inner), j = (int)((unsigned int)i % inner);
    int s = ids[k];
    if (s >= 0 && s < segments) atomicAdd(&y[(i64)s * inner + j], x[i]);
  }
}`;
}

export function unsortedSegmentSum(backend: CudaBackend, x: tf.TensorInfo, segmentIds: tf.TensorInfo, numSegments: number): tf.TensorInfo {
  const n = tf.util.sizeFromShape(segmentIds.shape);
  const inner = tf.util.sizeFromShape(x.shape) / Math.max(n, 1);
  const shape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
  const out = fill(backend, shape, 0, x.dtype);
  const t = cType(x.dtype);
  const name = `segment_sum_${t}`;
  backend.launch({
    name,
    source: () => segmentSumSource(name, t),
    grid: gridFor(n * inner),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(x)), arg.ptr(backend.ptr(segmentIds)), arg.i32(n), arg.i32(inner), arg.i32(numSegments)],
  });
  return out;
}

export function oneHotSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
extern "C" __global__ void ${name}(${t} *__restrict__ y, const int *__restrict__ ids, int n, int depth, ${t} on, ${t} off) {
  GRID_STRIDE(i, (i64)n * depth) { y[i] = ids[i / depth] == (int)(i % depth) ? on : off; }
}`;
}

export function oneHot(backend: CudaBackend, indices: tf.TensorInfo, depth: number, onValue: number, offValue: number, dtype: tf.DataType): tf.TensorInfo {
  const n = tf.util.sizeFromShape(indices.shape);
  const out = backend.makeOutput([...indices.shape, depth], dtype);
  const t = cType(dtype);
  const name = `one_hot_${t}`;
  const value = (v: number): Buffer => (t === 'float' ? arg.f32(v) : arg.i32(v));
  backend.launch({
    name,
    source: () => oneHotSource(name, t),
    grid: gridFor(n * depth),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(indices)), arg.i32(n), arg.i32(depth), value(onValue), value(offValue)],
  });
  return out;
}

export function gatherSources(): { name: string; source: string }[] {
  const out: { name: string; source: string }[] = [];
  for (const t of ['float', 'int'] as const) {
    out.push({ name: `gather_${t}`, source: gatherSource(`gather_${t}`, t) });
    out.push({ name: `gather_nd_${t}`, source: gatherNdSource(`gather_nd_${t}`, t) });
    out.push({ name: `scatter_add_${t}`, source: scatterSource(`scatter_add_${t}`, t, true) });
    out.push({ name: `scatter_set_${t}`, source: scatterSource(`scatter_set_${t}`, t, false) });
    out.push({ name: `segment_sum_${t}`, source: segmentSumSource(`segment_sum_${t}`, t) });
    out.push({ name: `one_hot_${t}`, source: oneHotSource(`one_hot_${t}`, t) });
  }
  return out;
}
