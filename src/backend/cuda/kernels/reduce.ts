/**
 * Reductions (Sum, Mean, Prod, Max, Min, All, Any, ArgMax, ArgMin) and Softmax. The input is seen as
 * [outer, reduced, inner]: reduced axes that are contiguous need no copy (a bias gradient, Σ over rows of
 * [tokens, hidden], reads columns in place); other axis sets are transposed first, as tfjs's own backends do.
 * Rows (inner = 1) get a block each with a tree reduction; columns get a thread per output, reading coalesced.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { cType, gridFor, PRELUDE } from './prelude.ts';
import { transpose } from './layout.ts';

type ReduceOp = 'sum' | 'prod' | 'max' | 'min' | 'all' | 'any' | 'argmax' | 'argmin';

const INIT: Record<ReduceOp, { float: string; int: string }> = {
  sum: { float: '0.0f', int: '0' },
  prod: { float: '1.0f', int: '1' },
  max: { float: '-__int_as_float(0x7f800000)', int: '(-2147483647 - 1)' },
  min: { float: '__int_as_float(0x7f800000)', int: '2147483647' },
  all: { float: '1', int: '1' },
  any: { float: '0', int: '0' },
  argmax: { float: '-__int_as_float(0x7f800000)', int: '(-2147483647 - 1)' },
  argmin: { float: '__int_as_float(0x7f800000)', int: '2147483647' },
};

/** acc ⊕ v; for arg reductions (acc, at) ⊕ (v, r) keeping the first index on ties, and NaN winning as tfjs's does. */
function combine(op: ReduceOp, t: 'float' | 'int'): string {
  const nan = t === 'float' ? '(v != v) || ' : '';
  switch (op) {
    case 'sum':
      return 'acc += v;';
    case 'prod':
      return 'acc *= v;';
    case 'max':
      return `if (${nan}v > acc) acc = v;`;
    case 'min':
      return `if (${nan}v < acc) acc = v;`;
    case 'all':
      return 'acc = acc && (v != 0);';
    case 'any':
      return 'acc = acc || (v != 0);';
    case 'argmax':
      return `if ((${nan}v > acc) && !(acc != acc)) { acc = v; at = r; }`;
    case 'argmin':
      return `if ((${nan}v < acc) && !(acc != acc)) { acc = v; at = r; }`;
  }
}

const isArg = (op: ReduceOp): boolean => op === 'argmax' || op === 'argmin';

/**
 * Columns: out[o, j] = ⊕_r x[o, r, j], a thread per output. Rows: a block per row, each thread folding a strided
 * part, then the partial results through shared memory in thread order (deterministic).
 */
export function reduceSource(name: string, op: ReduceOp, t: 'float' | 'int', rows: boolean, mean: boolean): string {
  const outT = isArg(op) ? 'int' : op === 'all' || op === 'any' ? 'int' : t;
  const result = isArg(op) ? 'at' : mean ? `(${t})(acc / (float)reduced)` : 'acc';
  const rowResult = isArg(op) ? 'at' : mean ? `(${t})(acc / divisor)` : 'acc';
  if (!rows) {
    return `${PRELUDE}
extern "C" __global__ void ${name}(${outT} *__restrict__ y, const ${t} *__restrict__ x, int outer, int reduced, int inner) {
  GRID_STRIDE(i, (i64)outer * inner) {
    int o = (int)(i / inner), j = (int)(i % inner);
    const ${t} *p = x + (i64)o * reduced * inner + j;
    ${t} acc = ${INIT[op][t]}; int at = 0;
    for (int r = 0; r < reduced; r++) { ${t} v = p[(i64)r * inner]; ${combine(op, t)} }
    (void)at; y[i] = (${outT})(${result});
  }
}`;
  }
  return `${PRELUDE}
// Block (o, b) folds elements [b·chunk, (b + 1)·chunk) of row o into y[o·gridDim.y + b]: one block per row when
// gridDim.y is 1, or a first pass over a long row split into gridDim.y parts (the parts then reduced again).
extern "C" __global__ void ${name}(${outT} *__restrict__ y, const ${t} *__restrict__ x, int outer, int reduced, int inner, int chunk, float divisor) {
  __shared__ ${t} accs[256];
  __shared__ int ats[256];
  const ${t} *p = x + (i64)blockIdx.x * reduced;
  int start = blockIdx.y * chunk, end = min(reduced, start + chunk);
  ${t} acc = ${INIT[op][t]}; int at = 0;
  for (int r = start + threadIdx.x; r < end; r += blockDim.x) { ${t} v = p[r]; ${combine(op, t)} }
  accs[threadIdx.x] = acc; ats[threadIdx.x] = at;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      acc = accs[threadIdx.x]; at = ats[threadIdx.x];
      ${t} v = accs[threadIdx.x + w]; int r = ats[threadIdx.x + w];
      ${isArg(op) ? `if (${combineArgTie(op, t)}) { acc = v; at = r; }` : combine(op, t)}
      accs[threadIdx.x] = acc; ats[threadIdx.x] = at;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) { acc = accs[0]; at = ats[0]; (void)at; y[(i64)blockIdx.x * gridDim.y + blockIdx.y] = (${outT})(${rowResult}); }
}`;
}

/** Merging two partial arg results: the better value wins, the lower index on a tie (partials are interleaved). */
function combineArgTie(op: ReduceOp, t: 'float' | 'int'): string {
  const cmp = op === 'argmax' ? '>' : '<';
  const nan = t === 'float' ? '(v != v && !(acc != acc)) || ' : '';
  return `${nan}(!(acc != acc) && (v ${cmp} acc || (v == acc && r < at)))`;
}

/**
 * Reduces x over `axes` (keepDims as tfjs: the caller reshapes). Returns [outer shape]-shaped data as a flat tensor
 * of the output shape.
 */
export function reduce(backend: CudaBackend, x: tf.TensorInfo, axes: number[], op: ReduceOp, mean = false): tf.TensorInfo {
  const rank = x.shape.length;
  const sorted = [...axes].sort((a, b) => a - b);
  const contiguous = sorted.every((a, i) => i === 0 || a === sorted[i - 1] + 1);
  let input = x;
  let first = sorted.length ? sorted[0] : rank;
  let last = sorted.length ? sorted[sorted.length - 1] : rank - 1;
  if (!contiguous) {
    const keep = x.shape.map((_, i) => i).filter((i) => !sorted.includes(i));
    input = transpose(backend, x, [...keep, ...sorted]);
    first = keep.length;
    last = rank - 1;
  }
  const dims = input.shape;
  const outer = dims.slice(0, first).reduce((a, b) => a * b, 1);
  const reduced = sorted.length ? dims.slice(first, last + 1).reduce((a, b) => a * b, 1) : 1;
  const inner = dims.slice(last + 1).reduce((a, b) => a * b, 1);
  const outShape = x.shape.filter((_, i) => !sorted.includes(i));
  const outDtype: tf.DataType = isArg(op)
    ? 'int32'
    : op === 'all' || op === 'any'
      ? 'bool'
      : mean && x.dtype !== 'float32'
        ? x.dtype
        : x.dtype === 'bool'
          ? 'int32'
          : x.dtype;
  const t = cType(x.dtype);
  const out = backend.makeOutput(outShape, outDtype);
  const rows = inner === 1 && reduced >= 32;
  if (rows) reduceRows(backend, out, input, outer, reduced, op, mean, reduced);
  else {
    const name = `reduce_${op}${mean ? '_mean' : ''}_${t}_cols`;
    backend.launch({
      name,
      source: () => reduceSource(name, op, t, false, mean),
      grid: gridFor(outer * inner),
      block: 256,
      args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(input)), arg.i32(outer), arg.i32(reduced), arg.i32(inner)],
    });
  }
  if (input !== x) backend.disposeIntermediate(input);
  return out;
}

/** Elements one block folds in the first pass over a long row. */
const SPLIT_CHUNK = 8192;

/**
 * Reduces each of `outer` rows of `reduced` elements into `out`. Few long rows (a parameter's squared sum for the
 * gradient norm: one row of 25 M) would leave all but a few blocks of the GPU idle, so such rows are split into
 * parts that blocks fold side by side, and the parts reduced again (the mean divides once, at the end).
 */
function reduceRows(
  backend: CudaBackend,
  out: tf.TensorInfo,
  input: tf.TensorInfo,
  outer: number,
  reduced: number,
  op: ReduceOp,
  mean: boolean,
  divisor: number,
): void {
  const t = cType(input.dtype);
  const splits = isArg(op) || outer >= 512 ? 1 : Math.min(Math.ceil(reduced / SPLIT_CHUNK), 65535);
  const name = `reduce_${op}${mean ? '_mean' : ''}_${t}_rows`;
  if (splits === 1) {
    backend.launch({
      name,
      source: () => reduceSource(name, op, t, true, mean),
      grid: [outer, 1, 1],
      block: 256,
      args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(input)), arg.i32(outer), arg.i32(reduced), arg.i32(1), arg.i32(reduced), arg.f32(divisor)],
    });
    return;
  }
  const partsDtype: tf.DataType = op === 'all' || op === 'any' ? 'int32' : input.dtype;
  const parts = backend.makeOutput([outer, splits], partsDtype);
  const first = `reduce_${op}_${t}_rows`;
  const chunk = Math.ceil(reduced / splits);
  backend.launch({
    name: first,
    source: () => reduceSource(first, op, t, true, false),
    grid: [outer, splits, 1],
    block: 256,
    args: [arg.ptr(backend.ptr(parts)), arg.ptr(backend.ptr(input)), arg.i32(outer), arg.i32(reduced), arg.i32(1), arg.i32(chunk), arg.f32(1)],
  });
  // all/any partials are 0/1 ints: the second pass folds them as such.
  reduceRows(backend, out, parts, outer, splits, op, mean, divisor);
  backend.disposeIntermediate(parts);
}

export function softmaxSource(name: string): string {
  return `${PRELUDE}
// One block per row: max, then Σ exp(x − max), then the quotient, as tfjs's Softmax kernels compute it.
extern "C" __global__ void ${name}(float *__restrict__ y, const float *__restrict__ x, int n) {
  const float *row = x + (i64)blockIdx.x * n;
  float *out = y + (i64)blockIdx.x * n;
  float m = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
  m = blockMax(m);
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(row[j] - m);
  s = blockSum(s);
  for (int j = threadIdx.x; j < n; j += blockDim.x) out[j] = expf(row[j] - m) / s;
}`;
}

/** Softmax over the last axis. */
export function softmax(backend: CudaBackend, logits: tf.TensorInfo): tf.TensorInfo {
  const n = logits.shape[logits.shape.length - 1];
  const rows = tf.util.sizeFromShape(logits.shape) / Math.max(n, 1);
  const out = backend.makeOutput(logits.shape, 'float32');
  const name = 'softmax_rows';
  backend.launch({
    name,
    source: () => softmaxSource(name),
    grid: rows,
    block: n >= 1024 ? 256 : 128,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(logits)), arg.i32(n)],
  });
  return out;
}

export const REDUCE_OPS: ReduceOp[] = ['sum', 'prod', 'max', 'min', 'all', 'any', 'argmax', 'argmin'];

export function reduceSources(): { name: string; source: string }[] {
  const out: { name: string; source: string }[] = [{ name: 'softmax_rows', source: softmaxSource('softmax_rows') }];
  for (const op of REDUCE_OPS) {
    for (const t of ['float', 'int'] as const) {
      for (const rows of [true, false]) {
        for (const mean of op === 'sum' ? [false, true] : [false]) {
          const name = `reduce_${op}${mean ? '_mean' : ''}_${t}_${rows ? 'rows' : 'cols'}`;
          out.push({ name, source: reduceSource(name, op, t, rows, mean) });
        }
      }
    }
  }
  return out;
}
