/**
 * Device code every generated kernel may use, written out because NVRTC from pip or distro packages has no
 * headers: the index struct that strided kernels take by value, block reductions, and bf16/f16 conversions.
 */
import type * as tf from '@tensorflow/tfjs-core';

/** The highest rank the strided kernels handle (tfjs's own kernels stop at 6). */
export const MAX_RANK = 8;

export const PRELUDE = `
#define MAX_RANK ${MAX_RANK}
typedef long long i64;
// Output shape and up to three operands' strides (0 on a broadcast axis), by value.
struct Strides { int rank; int size; int out[MAX_RANK]; int a[MAX_RANK]; int b[MAX_RANK]; int c[MAX_RANK]; };
__device__ __forceinline__ float nanf_() { return __int_as_float(0x7fffffff); }
// tfjs's Mod is a floor-mod: the result takes the divisor's sign.
__device__ __forceinline__ float modFloat(float a, float b) {
  float r = fmodf(a, b);
  return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r;
}
// 32-bit unsigned division: a tensor holds fewer than 2^31 elements, and 64-bit division costs ten times more.
__device__ __forceinline__ void offsets(const Strides &s, i64 index, int &oa, int &ob, int &oc) {
  oa = 0; ob = 0; oc = 0;
  unsigned int i = (unsigned int)index;
  for (int d = s.rank - 1; d >= 0; d--) {
    unsigned int n = (unsigned int)s.out[d];
    unsigned int q = i / n;
    int k = (int)(i - q * n);
    i = q;
    oa += k * s.a[d]; ob += k * s.b[d]; oc += k * s.c[d];
  }
}
#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)gridDim.x * blockDim.x)
__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
// Sum (or max) over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <bool MAX> __device__ float blockReduce(float v) {
  __shared__ float partial[32];
  __syncthreads();
  v = MAX ? warpMax(v) : warpSum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float none = MAX ? -__int_as_float(0x7f800000) : 0.0f;
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : none;
  return MAX ? warpMax(v) : warpSum(v);
}
__device__ __forceinline__ float blockSum(float v) { return blockReduce<false>(v); }
__device__ __forceinline__ float blockMax(float v) { return blockReduce<true>(v); }
// bf16 and f16 by hand: round to nearest even, NaN kept.
__device__ __forceinline__ unsigned short toBf16(float f) {
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffff) > 0x7f800000) return (unsigned short)((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return (unsigned short)(u >> 16);
}
// 128-bit loads and stores of four 4-byte elements (every buffer starts 512-byte aligned, so an index that is a
// multiple of 4 is 16-byte aligned): the memory-bound kernels reach HBM's bandwidth only with wide accesses.
__device__ __forceinline__ void load4(float *d, const float *p) { float4 v = *reinterpret_cast<const float4 *>(p); d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w; }
__device__ __forceinline__ void load4(int *d, const int *p) { int4 v = *reinterpret_cast<const int4 *>(p); d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w; }
__device__ __forceinline__ void store4(float *p, const float *d) { *reinterpret_cast<float4 *>(p) = make_float4(d[0], d[1], d[2], d[3]); }
__device__ __forceinline__ void store4(int *p, const int *d) { *reinterpret_cast<int4 *>(p) = make_int4(d[0], d[1], d[2], d[3]); }
#define GRID_STRIDE4(q, n4) for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < (n4); q += gridDim.x * blockDim.x)
__device__ __forceinline__ float fromBf16(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short toF16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
// A kernel's optional 16-bit twin of its output (halfTwin in matMul.ts): nothing when the pointer is null.
__device__ __forceinline__ void writeHalf(unsigned short *half, i64 i, float v, int bf16) {
  if (half) half[i] = bf16 ? toBf16(v) : toF16(v);
}
`;

/** The C type a tfjs dtype is stored as on the device (bool as int, 0/1). */
export function cType(dtype: tf.DataType): 'float' | 'int' {
  return dtype === 'float32' ? 'float' : 'int';
}

/** Whether a kernel over `n` elements takes them four at a time (see load4): the size must divide by 4. */
export function byFour(n: number): boolean {
  return n % 4 === 0;
}

/** Blocks of `threads` for a grid-stride loop over `n` elements. */
export function gridFor(n: number, threads = 256): number {
  return Math.max(1, Math.min(Math.ceil(n / threads), 1 << 20));
}

/** Row-major strides of `shape`. */
export function stridesOf(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

/**
 * The Strides struct's ints for an output of `out` and operands read at `operands` strides (one array per operand,
 * each the length of `out`). Adjacent axes that every operand walks contiguously are merged first, so that a
 * broadcast add of [4096, 768] + [768] indexes two axes, not four.
 */
export function stridesStruct(out: number[], operands: number[][]): number[] {
  let dims = out.map((n, d) => ({ n, s: operands.map((o) => o[d]) })).filter((x) => x.n !== 1);
  const merged: typeof dims = [];
  for (const d of dims) {
    const prev = merged[merged.length - 1];
    if (prev && prev.s.every((s, k) => s === d.s[k] * d.n)) {
      prev.n *= d.n;
      prev.s = d.s;
    } else merged.push({ n: d.n, s: [...d.s] });
  }
  dims = merged;
  if (dims.length > MAX_RANK) throw new Error(`cuda strided kernel: rank ${dims.length} above ${MAX_RANK}`);
  const pad = (a: number[]): number[] => [...a, ...new Array<number>(MAX_RANK - a.length).fill(0)];
  const size = out.reduce((a, b) => a * b, 1);
  const cols = [0, 1, 2].map((k) => pad(dims.map((d) => d.s[k] ?? 0)));
  return [dims.length, size, ...pad(dims.map((d) => d.n)), ...cols[0], ...cols[1], ...cols[2]];
}

/** Strides of an operand of `shape` broadcast to `out` (0 on broadcast axes; missing leading axes too). */
export function broadcastStrides(shape: number[], out: number[]): number[] {
  const own = stridesOf(shape);
  const lead = out.length - shape.length;
  return out.map((_, d) => (d < lead || shape[d - lead] === 1 ? 0 : own[d - lead]));
}
