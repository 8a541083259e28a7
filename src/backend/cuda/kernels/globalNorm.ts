/**
 * GlobalNorm under the contract of src/ops/globalNorm.ts: one launch per tensor writes the sums of squares of a fixed
 * grid of blocks into that tensor's row of partials, and one block adds each row, then the rows in input order,
 * and takes the root. Fixed grids and orders make it deterministic, without atomics.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../backend.ts';
import { PRELUDE } from './prelude.ts';

/** Blocks per tensor: enough to keep HBM busy on the largest gradient (the embedding's), and one row of partials. */
const BLOCKS = 512;
const THREADS = 256;

export function globalNormSource(): string {
  return `${PRELUDE}
extern "C" __global__ void sum_squares_partial(float *__restrict__ partials, const float *__restrict__ x, int n) {
  float s = 0.0f;
  if ((n & 3) == 0) {
    GRID_STRIDE4(q, n >> 2) { float v[4]; load4(v, x + 4 * q); s += v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3]; }
  } else GRID_STRIDE(i, n) { float v = x[i]; s += v * v; }
  s = blockSum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}
// One block: row t of ${BLOCKS} partials summed, the rows added in order t = 0, 1, …, then the root.
extern "C" __global__ void global_norm_final(float *__restrict__ out, const float *__restrict__ partials, int tensors) {
  float total = 0.0f;
  for (int t = 0; t < tensors; t++) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < ${BLOCKS}; j += blockDim.x) s += partials[t * ${BLOCKS} + j];
    total += blockSum(s);
  }
  if (threadIdx.x == 0) out[0] = sqrtf(total);
}`;
}

export function globalNorm(backend: CudaBackend, tensors: tf.TensorInfo[]): tf.TensorInfo {
  const partials = backend.makeOutput([tensors.length * BLOCKS], 'float32');
  backend.driver.fill32(backend.ptr(partials), 0, tensors.length * BLOCKS);
  tensors.forEach((t, i) => {
    const n = tf.util.sizeFromShape(t.shape);
    if (n === 0) return;
    backend.launch({
      name: 'sum_squares_partial',
      source: globalNormSource,
      grid: BLOCKS,
      block: THREADS,
      args: [arg.ptr(backend.ptr(partials) + BigInt(i * BLOCKS * 4)), arg.ptr(backend.ptr(t)), arg.i32(n)],
    });
  });
  const out = backend.makeOutput([], 'float32');
  backend.launch({
    name: 'global_norm_final',
    source: globalNormSource,
    grid: 1,
    block: THREADS,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(partials)), arg.i32(tensors.length)],
  });
  backend.disposeIntermediate(partials);
  return out;
}

export function globalNormSources(): { name: string; source: string }[] {
  return [{ name: 'sum_squares_partial', source: globalNormSource() }];
}
