/**
 * Element-wise kernels: unary maths, binary arithmetic and comparisons with tfjs's broadcasting, Select, Cast,
 * AddN and the fills. One CUDA C template each, specialised per operation and dtype into its own kernel; a binary
 * op whose operands have the output's shape skips the index arithmetic.
 *
 * The expressions follow tfjs's cpu kernels (NaN propagation of Maximum/Minimum, floor-mod, round half to even), so
 * that every backend gives the same numbers to float rounding.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { broadcastStrides, byFour, cType, gridFor, PRELUDE, stridesOf, stridesStruct } from './prelude.ts';

/** Unary operations: the expression of `x` (and the attributes p0, p1), and whether the output is bool. */
export const UNARY: Record<string, { expr: string; bool?: true; intExpr?: string }> = {
  Neg: { expr: '-x', intExpr: '-x' },
  Abs: { expr: 'fabsf(x)', intExpr: 'x < 0 ? -x : x' },
  Exp: { expr: 'expf(x)' },
  Expm1: { expr: 'expm1f(x)' },
  Log: { expr: 'logf(x)' },
  Log1p: { expr: 'log1pf(x)' },
  Sqrt: { expr: 'sqrtf(x)' },
  Rsqrt: { expr: '1.0f / sqrtf(x)' },
  Square: { expr: 'x * x', intExpr: 'x * x' },
  Reciprocal: { expr: '1.0f / x' },
  Relu: { expr: 'x > 0.0f ? x : (x != x ? x : 0.0f)', intExpr: 'x > 0 ? x : 0' },
  Relu6: { expr: 'x != x ? x : fminf(fmaxf(x, 0.0f), 6.0f)' },
  Elu: { expr: 'x >= 0.0f ? x : expm1f(x)' },
  Selu: { expr: 'x >= 0.0f ? 1.0507009873554804934193349852946f * x : 1.7580993408473768599402175208123f * expm1f(x)' },
  Sigmoid: { expr: '1.0f / (1.0f + expf(-x))' },
  Softplus: { expr: 'x > 15.942385f ? x : (x < -15.942385f ? expf(x) : log1pf(expf(x)))' },
  Tanh: { expr: 'tanhf(x)' },
  Erf: { expr: 'erff(x)' },
  Sin: { expr: 'sinf(x)' },
  Cos: { expr: 'cosf(x)' },
  Floor: { expr: 'floorf(x)' },
  Ceil: { expr: 'ceilf(x)' },
  Round: { expr: 'rintf(x)' },
  Sign: { expr: 'x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x != x ? x : 0.0f))', intExpr: 'x > 0 ? 1 : (x < 0 ? -1 : 0)' },
  Step: { expr: 'x != x ? x : (x > 0.0f ? 1.0f : p0)' },
  LeakyRelu: { expr: 'x >= 0.0f ? x : p0 * x' },
  ClipByValue: { expr: 'x != x ? x : fminf(fmaxf(x, p0), p1)', intExpr: 'x < (int)p0 ? (int)p0 : (x > (int)p1 ? (int)p1 : x)' },
  IsNan: { expr: 'x != x', bool: true },
  IsInf: { expr: 'isinf(x)', bool: true },
  IsFinite: { expr: 'isfinite(x)', bool: true },
  LogicalNot: { expr: '!x', intExpr: 'x == 0', bool: true },
};

type BinaryKind = 'arith' | 'compare' | 'logical';
export const BINARY: Record<string, { expr: string; intExpr?: string; kind: BinaryKind }> = {
  Add: { expr: 'a + b', kind: 'arith' },
  Sub: { expr: 'a - b', kind: 'arith' },
  Multiply: { expr: 'a * b', kind: 'arith' },
  RealDiv: { expr: 'a / b', kind: 'arith' },
  FloorDiv: { expr: '(int)floorf(a / b)', intExpr: 'b == 0 ? 0 : (int)floorf((float)a / (float)b)', kind: 'arith' },
  Maximum: { expr: '(a != a || b != b) ? nanf_() : (a > b ? a : b)', intExpr: 'a > b ? a : b', kind: 'arith' },
  Minimum: { expr: '(a != a || b != b) ? nanf_() : (a < b ? a : b)', intExpr: 'a < b ? a : b', kind: 'arith' },
  Pow: { expr: 'powf(a, b)', intExpr: '(int)powf((float)a, (float)b)', kind: 'arith' },
  SquaredDifference: { expr: '(a - b) * (a - b)', kind: 'arith' },
  Mod: { expr: 'modFloat(a, b)', intExpr: 'b == 0 ? 0 : ((a % b) + b) % b', kind: 'arith' },
  Atan2: { expr: 'atan2f(a, b)', kind: 'arith' },
  Equal: { expr: 'a == b', kind: 'compare' },
  NotEqual: { expr: 'a != b', kind: 'compare' },
  Greater: { expr: 'a > b', kind: 'compare' },
  GreaterEqual: { expr: 'a >= b', kind: 'compare' },
  Less: { expr: 'a < b', kind: 'compare' },
  LessEqual: { expr: 'a <= b', kind: 'compare' },
  LogicalAnd: { expr: '(a != 0) && (b != 0)', kind: 'logical' },
  LogicalOr: { expr: '(a != 0) || (b != 0)', kind: 'logical' },
};

export function unarySource(name: string, op: string, inType: 'float' | 'int', outType: 'float' | 'int'): string {
  const spec = UNARY[op];
  const expr = inType === 'int' && spec.intExpr ? spec.intExpr : spec.expr;
  return `${PRELUDE}
extern "C" __global__ void ${name}(${outType} *__restrict__ y, const ${inType} *__restrict__ xs, int n, float p0, float p1) {
  if ((n & 3) == 0) {
    GRID_STRIDE4(q, n >> 2) {
      ${inType} x4[4]; ${outType} y4[4];
      load4(x4, xs + 4 * q);
      for (int k = 0; k < 4; k++) { ${inType} x = x4[k]; y4[k] = (${outType})(${expr}); }
      store4(y + 4 * q, y4);
    }
  } else GRID_STRIDE(i, n) { ${inType} x = xs[i]; y[i] = (${outType})(${expr}); }
}`;
}

/**
 * How a binary kernel finds its operands' elements: the same index ('same'), an operand that is one value
 * ('scalarA', 'scalarB'), an operand that is the output's trailing axes, as a bias or a norm weight is ('tailA',
 * 'tailB': index mod its size, kept in the struct's size of strides.c[0]), or full strided broadcasting.
 */
export type BroadcastKind = 'same' | 'scalarA' | 'scalarB' | 'tailA' | 'tailB' | 'bcast';
export const BROADCAST_KINDS: BroadcastKind[] = ['same', 'scalarA', 'scalarB', 'tailA', 'tailB', 'bcast'];

const INDEX: Record<BroadcastKind, string> = {
  same: 'int oa = (int)i, ob = (int)i;',
  scalarA: 'int oa = 0, ob = (int)i;',
  scalarB: 'int oa = (int)i, ob = 0;',
  tailA: 'int oa = (int)((unsigned int)i % (unsigned int)s.c[0]), ob = (int)i;',
  tailB: 'int oa = (int)i, ob = (int)((unsigned int)i % (unsigned int)s.c[0]);',
  bcast: 'int oa, ob, oc; offsets(s, i, oa, ob, oc);',
};

/** When a kind's kernel takes four elements at a time: the size, and a tail operand's size, divide by 4. */
const VEC_CONDITION: Record<Exclude<BroadcastKind, 'bcast'>, string> = {
  same: '(s.size & 3) == 0',
  scalarA: '(s.size & 3) == 0',
  scalarB: '(s.size & 3) == 0',
  tailA: '(s.size & 3) == 0 && (s.c[0] & 3) == 0',
  tailB: '(s.size & 3) == 0 && (s.c[0] & 3) == 0',
};

/** The host's side of VEC_CONDITION: whether the launch should be sized for four elements a thread. */
function binaryByFour(kind: BroadcastKind, size: number, tail: number): boolean {
  if (kind === 'bcast') return false;
  return byFour(size) && (kind === 'tailA' || kind === 'tailB' ? byFour(tail) : true);
}

/** Which BroadcastKind serves operands of shapes a and b broadcast to `out`. */
export function broadcastKind(a: number[], b: number[], out: number[]): BroadcastKind {
  const size = (s: number[]): number => s.reduce((x, y) => x * y, 1);
  const isTail = (s: number[]): boolean => {
    const t = s.slice(s.findIndex((d) => d !== 1) === -1 ? s.length : s.findIndex((d) => d !== 1));
    return t.length > 0 && tf.util.arraysEqual(t, out.slice(out.length - t.length));
  };
  if (tf.util.arraysEqual(a, out) && tf.util.arraysEqual(b, out)) return 'same';
  if (tf.util.arraysEqual(b, out) && size(a) === 1) return 'scalarA';
  if (tf.util.arraysEqual(a, out) && size(b) === 1) return 'scalarB';
  if (tf.util.arraysEqual(b, out) && isTail(a)) return 'tailA';
  if (tf.util.arraysEqual(a, out) && isTail(b)) return 'tailB';
  return 'bcast';
}

export function binarySource(name: string, op: string, computeType: 'float' | 'int', outType: 'float' | 'int', kind: BroadcastKind): string {
  const spec = BINARY[op];
  const expr = computeType === 'int' && spec.intExpr ? spec.intExpr : spec.expr;
  const index = INDEX[kind];
  const t = computeType;
  // Four at a time (binaryByFour decides, the kernel checks the same): each operand is four loaded elements or one repeated.
  const four =
    kind === 'bcast'
      ? ''
      : `if (${VEC_CONDITION[kind]}) {
    GRID_STRIDE4(q, s.size >> 2) {
      int i = 4 * q; ${index}
      ${t} a4[4], b4[4]; ${outType} y4[4];
      ${kind === 'scalarA' ? 'a4[0] = a4[1] = a4[2] = a4[3] = as[0];' : 'load4(a4, as + oa);'}
      ${kind === 'scalarB' ? 'b4[0] = b4[1] = b4[2] = b4[3] = bs[0];' : 'load4(b4, bs + ob);'}
      for (int k = 0; k < 4; k++) { ${t} a = a4[k]; ${t} b = b4[k]; y4[k] = (${outType})(${expr}); }
      store4(y + i, y4);
    }
  } else `;
  return `${PRELUDE}
extern "C" __global__ void ${name}(${outType} *__restrict__ y, const ${t} *__restrict__ as, const ${t} *__restrict__ bs, Strides s) {
  ${four}GRID_STRIDE(i, s.size) { ${index} ${t} a = as[oa]; ${t} b = bs[ob]; y[i] = (${outType})(${expr}); }
}`;
}

/** Runs unary `op` on x; attributes p0/p1 (Step's alpha, ClipByValue's bounds). */
export function unary(backend: CudaBackend, op: string, x: tf.TensorInfo, p0 = 0, p1 = 0): tf.TensorInfo {
  const spec = UNARY[op];
  const inType = cType(x.dtype);
  // int and bool inputs without an int form are computed as float (tfjs casts them the same way).
  const viaFloat = inType === 'int' && !spec.intExpr;
  const outDtype: tf.DataType = spec.bool ? 'bool' : viaFloat ? 'float32' : x.dtype;
  const input = viaFloat ? cast(backend, x, 'float32') : x;
  const srcType = cType(input.dtype);
  const outType = cType(outDtype);
  const name = `unary_${op}_${srcType}_${outType}`;
  const n = tf.util.sizeFromShape(x.shape);
  const out = backend.makeOutput(x.shape, outDtype);
  backend.launch({
    name,
    source: () => unarySource(name, op, srcType, outType),
    grid: gridFor(byFour(n) ? n / 4 : n),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(input)), arg.i32(n), arg.f32(p0), arg.f32(p1)],
  });
  if (viaFloat) backend.disposeIntermediate(input);
  return out;
}

export function binary(backend: CudaBackend, op: string, a: tf.TensorInfo, b: tf.TensorInfo): tf.TensorInfo {
  const spec = BINARY[op];
  const upcast = tf.upcastType(a.dtype, b.dtype);
  const computeDtype: tf.DataType = spec.kind === 'logical' ? 'int32' : upcast === 'bool' ? 'int32' : upcast;
  // tfjs's FloorDiv gives int32 whatever its inputs (the cpu kernel's output dtype).
  const outDtype: tf.DataType = op === 'FloorDiv' ? 'int32' : spec.kind === 'arith' ? (upcast === 'bool' ? 'int32' : upcast) : 'bool';
  const computeType = cType(computeDtype);
  const ca = cType(a.dtype) === computeType ? a : cast(backend, a, computeDtype);
  const cb = cType(b.dtype) === computeType ? b : cast(backend, b, computeDtype);
  const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
  const outType = cType(outDtype);
  const kind = broadcastKind(a.shape, b.shape, shape);
  const name = `binary_${op}_${computeType}_${outType}_${kind}`;
  const out = backend.makeOutput(shape, outDtype);
  const tail = kind === 'tailA' ? tf.util.sizeFromShape(a.shape) : kind === 'tailB' ? tf.util.sizeFromShape(b.shape) : 0;
  const strides =
    kind !== 'bcast'
      ? [0, tf.util.sizeFromShape(shape), ...new Array<number>(24).fill(0), tail, ...new Array<number>(7).fill(0)]
      : stridesStruct(shape, [broadcastStrides(a.shape, shape), broadcastStrides(b.shape, shape), stridesOf(shape).map(() => 0)]);
  backend.launch({
    name,
    source: () => binarySource(name, op, computeType, outType, kind),
    grid: gridFor(binaryByFour(kind, strides[1], tail) ? strides[1] / 4 : strides[1]),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(ca)), arg.ptr(backend.ptr(cb)), arg.ints(strides)],
  });
  if (ca !== a) backend.disposeIntermediate(ca);
  if (cb !== b) backend.disposeIntermediate(cb);
  return out;
}

export function castSource(name: string, from: 'float' | 'int', to: 'float' | 'int', toBool: boolean): string {
  const expr = toBool ? '(x != 0) ? 1 : 0' : from === 'float' && to === 'int' ? '(int)truncf(x)' : 'x';
  return `${PRELUDE}
extern "C" __global__ void ${name}(${to} *__restrict__ y, const ${from} *__restrict__ xs, int n) {
  GRID_STRIDE(i, n) { ${from} x = xs[i]; y[i] = (${to})(${expr}); }
}`;
}

/** tfjs's Cast: float to int truncates toward zero; anything to bool is x != 0. */
export function cast(backend: CudaBackend, x: tf.TensorInfo, dtype: tf.DataType): tf.TensorInfo {
  const n = tf.util.sizeFromShape(x.shape);
  const from = cType(x.dtype);
  const to = cType(dtype);
  const out = backend.makeOutput(x.shape, dtype);
  if (from === to && (dtype !== 'bool' || x.dtype === 'bool')) {
    backend.driver.copy(backend.ptr(out), backend.ptr(x), n * 4);
    return out;
  }
  const toBool = dtype === 'bool';
  const name = `cast_${from}_${to}${toBool ? '_bool' : ''}`;
  backend.launch({
    name,
    source: () => castSource(name, from, to, toBool),
    grid: gridFor(n),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(x)), arg.i32(n)],
  });
  return out;
}

export function selectSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
extern "C" __global__ void ${name}(${t} *__restrict__ y, const int *__restrict__ c, const ${t} *__restrict__ a, const ${t} *__restrict__ b, int n, int perCondition) {
  GRID_STRIDE(i, n) { y[i] = c[i / perCondition] ? a[i] : b[i]; }
}`;
}

/** Select(condition, t, e): t where the condition holds; a condition of rank 1 picks whole rows (as tfjs's where). */
export function select(backend: CudaBackend, condition: tf.TensorInfo, t: tf.TensorInfo, e: tf.TensorInfo): tf.TensorInfo {
  const n = tf.util.sizeFromShape(t.shape);
  const nc = tf.util.sizeFromShape(condition.shape);
  const dtype = tf.upcastType(t.dtype, e.dtype);
  const ty = cType(dtype);
  const out = backend.makeOutput(t.shape, dtype);
  const name = `select_${ty}`;
  backend.launch({
    name,
    source: () => selectSource(name, ty),
    grid: gridFor(n),
    block: 256,
    args: [
      arg.ptr(backend.ptr(out)),
      arg.ptr(backend.ptr(condition)),
      arg.ptr(backend.ptr(t)),
      arg.ptr(backend.ptr(e)),
      arg.i32(n),
      arg.i32(nc === 0 ? 1 : n / nc),
    ],
  });
  return out;
}

/** A tensor of `shape` filled with `value`. */
export function fill(backend: CudaBackend, shape: number[], value: number, dtype: tf.DataType): tf.TensorInfo {
  const out = backend.makeOutput(shape, dtype);
  const word = Buffer.alloc(4);
  if (dtype === 'float32') word.writeFloatLE(value);
  else word.writeInt32LE(dtype === 'bool' ? (value ? 1 : 0) : value | 0);
  backend.driver.fill32(backend.ptr(out), word.readUInt32LE(0), tf.util.sizeFromShape(shape));
  return out;
}

/** A copy of x in fresh memory (Identity's output must not alias when tfjs later writes into it). */
export function copy(backend: CudaBackend, x: tf.TensorInfo, shape = x.shape): tf.TensorInfo {
  const out = backend.makeOutput(shape, x.dtype);
  backend.driver.copy(backend.ptr(out), backend.ptr(x), tf.util.sizeFromShape(x.shape) * 4);
  return out;
}

/** Every source this module can generate, for the test that compiles them all with NVRTC. */
export function elementwiseSources(): { name: string; source: string }[] {
  const out: { name: string; source: string }[] = [];
  for (const op of Object.keys(UNARY)) {
    for (const t of ['float', 'int'] as const) {
      const spec = UNARY[op];
      if (t === 'int' && !spec.intExpr) continue;
      const o = spec.bool ? 'int' : t;
      out.push({ name: `unary_${op}_${t}_${o}`, source: unarySource(`unary_${op}_${t}_${o}`, op, t, o) });
    }
  }
  for (const op of Object.keys(BINARY)) {
    for (const t of ['float', 'int'] as const) {
      const o = BINARY[op].kind === 'arith' && op !== 'FloorDiv' ? t : 'int';
      for (const kind of BROADCAST_KINDS) {
        const name = `binary_${op}_${t}_${o}_${kind}`;
        out.push({ name, source: binarySource(name, op, t, o, kind) });
      }
    }
  }
  for (const [f, t, b] of [
    ['float', 'int', false],
    ['int', 'float', false],
    ['float', 'int', true],
    ['int', 'int', true],
  ] as const) {
    const name = `cast_${f}_${t}${b ? '_bool' : ''}`;
    out.push({ name, source: castSource(name, f, t, b) });
  }
  for (const t of ['float', 'int'] as const) out.push({ name: `select_${t}`, source: selectSource(`select_${t}`, t) });
  return out;
}
