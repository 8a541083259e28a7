/**
 * TopK over the last axis (the teacher cache's top-k of each row of logits), a block per row: k rounds of a block
 * arg-max over the ids not yet taken, which a bit mask in shared memory marks. Ties go to the lower id, as tfjs's
 * cpu kernel orders them. O(k · V) per row: fine for the k of a cache (tens), not meant for a full sort.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { cType, PRELUDE } from './prelude.ts';

export function topKSource(name: string, t: 'float' | 'int'): string {
  return `${PRELUDE}
extern "C" __global__ void ${name}(${t} *__restrict__ values, int *__restrict__ ids, const ${t} *__restrict__ x, int n, int k) {
  extern __shared__ unsigned int taken[];
  __shared__ ${t} bestV[32];
  __shared__ int bestI[32];
  const ${t} *row = x + (i64)blockIdx.x * n;
  int words = (n + 31) / 32;
  for (int w = threadIdx.x; w < words; w += blockDim.x) taken[w] = 0u;
  __syncthreads();
  for (int r = 0; r < k; r++) {
    ${t} v = 0; int at = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      if (taken[j >> 5] & (1u << (j & 31))) continue;
      ${t} c = row[j];
      if (at < 0 || c > v) { v = c; at = j; }
    }
    // Warp, then block: the larger value wins, the lower id on a tie; at < 0 means nothing left in this lane.
    for (int o = 16; o > 0; o >>= 1) {
      ${t} ov = __shfl_xor_sync(0xffffffff, v, o);
      int oi = __shfl_xor_sync(0xffffffff, at, o);
      if (oi >= 0 && (at < 0 || ov > v || (ov == v && oi < at))) { v = ov; at = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bestV[warp] = v; bestI[warp] = at; }
    __syncthreads();
    if (warp == 0) {
      int warps = blockDim.x >> 5;
      v = lane < warps ? bestV[lane] : (${t})0; at = lane < warps ? bestI[lane] : -1;
      for (int o = 16; o > 0; o >>= 1) {
        ${t} ov = __shfl_xor_sync(0xffffffff, v, o);
        int oi = __shfl_xor_sync(0xffffffff, at, o);
        if (oi >= 0 && (at < 0 || ov > v || (ov == v && oi < at))) { v = ov; at = oi; }
      }
      if (lane == 0) {
        values[(i64)blockIdx.x * k + r] = v; ids[(i64)blockIdx.x * k + r] = at;
        if (at >= 0) taken[at >> 5] |= 1u << (at & 31);
      }
    }
    __syncthreads();
  }
}`;
}

export function topK(backend: CudaBackend, x: tf.TensorInfo, k: number): [tf.TensorInfo, tf.TensorInfo] {
  const n = x.shape[x.shape.length - 1];
  const rows = tf.util.sizeFromShape(x.shape) / Math.max(n, 1);
  const shape = [...x.shape.slice(0, -1), k];
  const values = backend.makeOutput(shape, x.dtype);
  const ids = backend.makeOutput(shape, 'int32');
  const t = cType(x.dtype);
  const name = `top_k_${t}`;
  if (k > 0 && rows > 0) {
    backend.launch({
      name,
      source: () => topKSource(name, t),
      grid: rows,
      block: 256,
      sharedBytes: Math.ceil(n / 32) * 4,
      args: [arg.ptr(backend.ptr(values)), arg.ptr(backend.ptr(ids)), arg.ptr(backend.ptr(x)), arg.i32(n), arg.i32(k)],
    });
  }
  return [values, ids];
}

export function topKSources(): { name: string; source: string }[] {
  return (['float', 'int'] as const).map((t) => ({ name: `top_k_${t}`, source: topKSource(`top_k_${t}`, t) }));
}
