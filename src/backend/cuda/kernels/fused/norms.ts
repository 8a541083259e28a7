/**
 * RMSNorm and LayerNorm as CUDA kernels under the contracts of src/ops/rmsNorm.ts and src/ops/layerNorm.ts.
 * Forward: a block per row. Backward: a block per row for dx, which also leaves each row's statistics (r, or μ and
 * rstd) in a small buffer; then the parameter gradients as column sums over chunks of rows (a block column per
 * chunk, reading coalesced), and the chunks summed by the ordinary column reduction: deterministic, no atomics.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../../backend.ts';
import { PRELUDE } from '../prelude.ts';
import { reduce } from '../reduce.ts';

const ROWS_PER_CHUNK = 64;

export function rmsNormSource(): string {
  return `${PRELUDE}
__device__ float rowRms(const float *x, int n, float eps) {
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[j] * x[j];
  return rsqrtf(blockSum(s) / (float)n + eps);
}
extern "C" __global__ void rms_norm(float *__restrict__ y, const float *__restrict__ x, const float *__restrict__ w, int n, float eps) {
  const float *row = x + (i64)blockIdx.x * n;
  float r = rowRms(row, n, eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) y[(i64)blockIdx.x * n + j] = row[j] * r * w[j];
}
// dx = r·g − x·r³·mean(g·x) with g = dy·w; r of each row kept in rs for the weight gradient.
extern "C" __global__ void rms_norm_dx(float *__restrict__ dx, float *__restrict__ rs, const float *__restrict__ dy, const float *__restrict__ x, const float *__restrict__ w, int n, float eps) {
  i64 base = (i64)blockIdx.x * n;
  float r = rowRms(x + base, n, eps);
  float d = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) d += dy[base + j] * w[j] * x[base + j];
  float along = r * r * r * blockSum(d) / (float)n;
  for (int j = threadIdx.x; j < n; j += blockDim.x) dx[base + j] = dy[base + j] * w[j] * r - x[base + j] * along;
  if (threadIdx.x == 0) rs[blockIdx.x] = r;
}
// partial[c, j] = Σ_{rows i of chunk c} dy[i, j]·x[i, j]·r[i]
extern "C" __global__ void rms_norm_dw_chunks(float *__restrict__ partial, const float *__restrict__ dy, const float *__restrict__ x, const float *__restrict__ rs, int rows, int n, int perChunk) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  int start = blockIdx.y * perChunk, end = min(rows, start + perChunk);
  float s = 0.0f;
  for (int i = start; i < end; i++) s += dy[(i64)i * n + j] * x[(i64)i * n + j] * rs[i];
  partial[(i64)blockIdx.y * n + j] = s;
}`;
}

export function layerNormSource(): string {
  return `${PRELUDE}
// μ, then the biased variance from x − μ (two passes, as tf.moments), per row.
__device__ void rowMoments(const float *x, int n, float eps, float &mean, float &rstd) {
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[j];
  mean = blockSum(s) / (float)n;
  float v = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) { float d = x[j] - mean; v += d * d; }
  rstd = rsqrtf(blockSum(v) / (float)n + eps);
}
extern "C" __global__ void layer_norm(float *__restrict__ y, const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ b, int n, float eps) {
  i64 base = (i64)blockIdx.x * n;
  float mean, rstd;
  rowMoments(x + base, n, eps, mean, rstd);
  for (int j = threadIdx.x; j < n; j += blockDim.x) y[base + j] = (x[base + j] - mean) * rstd * w[j] + b[j];
}
// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w; μ and rstd of each row kept for the parameter gradients.
extern "C" __global__ void layer_norm_dx(float *__restrict__ dx, float *__restrict__ stats, const float *__restrict__ dy, const float *__restrict__ x, const float *__restrict__ w, int n, float eps) {
  i64 base = (i64)blockIdx.x * n;
  float mean, rstd;
  rowMoments(x + base, n, eps, mean, rstd);
  float sg = 0.0f, sgx = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) { float g = dy[base + j] * w[j]; sg += g; sgx += g * (x[base + j] - mean) * rstd; }
  float mg = blockSum(sg) / (float)n;
  float mgx = blockSum(sgx) / (float)n;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    float xh = (x[base + j] - mean) * rstd;
    dx[base + j] = rstd * (dy[base + j] * w[j] - mg - xh * mgx);
  }
  if (threadIdx.x == 0) { stats[2 * blockIdx.x] = mean; stats[2 * blockIdx.x + 1] = rstd; }
}
// partial[c, j] = Σ dy·x̂ and partial[chunks + c, j] = Σ dy over the rows of chunk c.
extern "C" __global__ void layer_norm_dwb_chunks(float *__restrict__ partial, const float *__restrict__ dy, const float *__restrict__ x, const float *__restrict__ stats, int rows, int n, int perChunk) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  int start = blockIdx.y * perChunk, end = min(rows, start + perChunk);
  float sw = 0.0f, sb = 0.0f;
  for (int i = start; i < end; i++) {
    float g = dy[(i64)i * n + j];
    sw += g * (x[(i64)i * n + j] - stats[2 * i]) * stats[2 * i + 1];
    sb += g;
  }
  partial[(i64)blockIdx.y * n + j] = sw;
  partial[(i64)(gridDim.y + blockIdx.y) * n + j] = sb;
}`;
}

const threadsFor = (n: number): number => (n >= 1024 ? 256 : n >= 256 ? 128 : 64);

export function rmsNorm(backend: CudaBackend, x: tf.TensorInfo, weight: tf.TensorInfo, eps: number): tf.TensorInfo {
  const [rows, n] = x.shape;
  const y = backend.makeOutput(x.shape, 'float32');
  backend.launch({
    name: 'rms_norm',
    source: rmsNormSource,
    grid: rows,
    block: threadsFor(n),
    args: [arg.ptr(backend.ptr(y)), arg.ptr(backend.ptr(x)), arg.ptr(backend.ptr(weight)), arg.i32(n), arg.f32(eps)],
  });
  return y;
}

export function rmsNormGrad(backend: CudaBackend, dy: tf.TensorInfo, x: tf.TensorInfo, weight: tf.TensorInfo, eps: number): tf.TensorInfo[] {
  const [rows, n] = x.shape;
  const dx = backend.makeOutput(x.shape, 'float32');
  const rs = backend.makeOutput([rows], 'float32');
  backend.launch({
    name: 'rms_norm_dx',
    source: rmsNormSource,
    grid: rows,
    block: threadsFor(n),
    args: [
      arg.ptr(backend.ptr(dx)),
      arg.ptr(backend.ptr(rs)),
      arg.ptr(backend.ptr(dy)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(weight)),
      arg.i32(n),
      arg.f32(eps),
    ],
  });
  const chunks = Math.ceil(rows / ROWS_PER_CHUNK);
  const partial = backend.makeOutput([chunks, n], 'float32');
  backend.launch({
    name: 'rms_norm_dw_chunks',
    source: rmsNormSource,
    grid: [Math.ceil(n / 128), chunks, 1],
    block: 128,
    args: [
      arg.ptr(backend.ptr(partial)),
      arg.ptr(backend.ptr(dy)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(rs)),
      arg.i32(rows),
      arg.i32(n),
      arg.i32(ROWS_PER_CHUNK),
    ],
  });
  const dw = reduce(backend, partial, [0], 'sum');
  backend.disposeIntermediate(rs);
  backend.disposeIntermediate(partial);
  return [dx, dw];
}

export function layerNorm(backend: CudaBackend, x: tf.TensorInfo, weight: tf.TensorInfo, bias: tf.TensorInfo, eps: number): tf.TensorInfo {
  const [rows, n] = x.shape;
  const y = backend.makeOutput(x.shape, 'float32');
  backend.launch({
    name: 'layer_norm',
    source: layerNormSource,
    grid: rows,
    block: threadsFor(n),
    args: [arg.ptr(backend.ptr(y)), arg.ptr(backend.ptr(x)), arg.ptr(backend.ptr(weight)), arg.ptr(backend.ptr(bias)), arg.i32(n), arg.f32(eps)],
  });
  return y;
}

export function layerNormGrad(backend: CudaBackend, dy: tf.TensorInfo, x: tf.TensorInfo, weight: tf.TensorInfo, eps: number): tf.TensorInfo[] {
  const [rows, n] = x.shape;
  const dx = backend.makeOutput(x.shape, 'float32');
  const stats = backend.makeOutput([rows, 2], 'float32');
  backend.launch({
    name: 'layer_norm_dx',
    source: layerNormSource,
    grid: rows,
    block: threadsFor(n),
    args: [
      arg.ptr(backend.ptr(dx)),
      arg.ptr(backend.ptr(stats)),
      arg.ptr(backend.ptr(dy)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(weight)),
      arg.i32(n),
      arg.f32(eps),
    ],
  });
  const chunks = Math.ceil(rows / ROWS_PER_CHUNK);
  const partial = backend.makeOutput([2, chunks, n], 'float32');
  backend.launch({
    name: 'layer_norm_dwb_chunks',
    source: layerNormSource,
    grid: [Math.ceil(n / 128), chunks, 1],
    block: 128,
    args: [
      arg.ptr(backend.ptr(partial)),
      arg.ptr(backend.ptr(dy)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(stats)),
      arg.i32(rows),
      arg.i32(n),
      arg.i32(ROWS_PER_CHUNK),
    ],
  });
  const sums = reduce(backend, partial, [1], 'sum');
  const dw = backend.makeOutput([n], 'float32');
  const db = backend.makeOutput([n], 'float32');
  backend.driver.copy(backend.ptr(dw), backend.ptr(sums), n * 4);
  backend.driver.copy(backend.ptr(db), backend.ptr(sums) + BigInt(n * 4), n * 4);
  for (const t of [stats, partial, sums]) backend.disposeIntermediate(t);
  return [dx, dw, db];
}

export function normSources(): { name: string; source: string }[] {
  return [
    { name: 'rms_norm', source: rmsNormSource() },
    { name: 'layer_norm', source: layerNormSource() },
  ];
}
