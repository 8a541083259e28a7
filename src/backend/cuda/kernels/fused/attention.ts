/**
 * The element-wise and row-wise kernels of a transformer layer under the contracts of src/ops: SwiGLU (forward and
 * both gradients in one pass), rotary embedding (forward and its transpose), and attention's causal softmax with
 * the mask worked out from positions (forward and backward).
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../../backend.ts';
import { byFour, gridFor, PRELUDE } from '../prelude.ts';
import { halfTwinArgs } from '../matMul.ts';
import type { CausalSoftmaxAttrs } from '../../../../ops/causalSoftmax.ts';

export function swigluSource(): string {
  return `${PRELUDE}
__device__ __forceinline__ float sigmoidOf(float g) { return 1.0f / (1.0f + expf(-g)); }
// Four elements a thread when n divides by 4 (load4), one otherwise. The output feeds the down projection: its
// 16-bit twin, when one is asked for, is written here rather than converted again.
extern "C" __global__ void swiglu(float *__restrict__ y, unsigned short *__restrict__ half, int bf16, const float *__restrict__ gate, const float *__restrict__ up, int n) {
  if ((n & 3) == 0) {
    GRID_STRIDE4(q, n >> 2) {
      float g[4], u[4], v[4];
      load4(g, gate + 4 * q);
      load4(u, up + 4 * q);
      for (int k = 0; k < 4; k++) { v[k] = g[k] * sigmoidOf(g[k]) * u[k]; writeHalf(half, 4 * q + k, v[k], bf16); }
      store4(y + 4 * q, v);
    }
  } else GRID_STRIDE(i, n) { float g = gate[i]; y[i] = g * sigmoidOf(g) * up[i]; writeHalf(half, i, y[i], bf16); }
}
__device__ __forceinline__ void swigluGrad(float d, float g, float u, float &dg, float &du) {
  float s = sigmoidOf(g);
  dg = d * u * s * (1.0f + g * (1.0f - s));
  du = d * g * s;
}
extern "C" __global__ void swiglu_grad(float *__restrict__ dGate, float *__restrict__ dUp, const float *__restrict__ dy, const float *__restrict__ gate, const float *__restrict__ up, int n) {
  if ((n & 3) == 0) {
    GRID_STRIDE4(q, n >> 2) {
      float d[4], g[4], u[4], dg[4], du[4];
      load4(d, dy + 4 * q);
      load4(g, gate + 4 * q);
      load4(u, up + 4 * q);
      for (int k = 0; k < 4; k++) swigluGrad(d[k], g[k], u[k], dg[k], du[k]);
      store4(dGate + 4 * q, dg);
      store4(dUp + 4 * q, du);
    }
  } else GRID_STRIDE(i, n) { swigluGrad(dy[i], gate[i], up[i], dGate[i], dUp[i]); }
}`;
}

export function swiglu(backend: CudaBackend, gate: tf.TensorInfo, up: tf.TensorInfo): tf.TensorInfo {
  const n = tf.util.sizeFromShape(gate.shape);
  const y = backend.makeOutput(gate.shape, 'float32');
  backend.launch({
    name: 'swiglu',
    source: swigluSource,
    grid: gridFor(byFour(n) ? n / 4 : n),
    block: 256,
    args: [arg.ptr(backend.ptr(y)), ...halfTwinArgs(backend, y), arg.ptr(backend.ptr(gate)), arg.ptr(backend.ptr(up)), arg.i32(n)],
  });
  return y;
}

export function swigluGrad(backend: CudaBackend, dy: tf.TensorInfo, gate: tf.TensorInfo, up: tf.TensorInfo): tf.TensorInfo[] {
  const n = tf.util.sizeFromShape(gate.shape);
  const dGate = backend.makeOutput(gate.shape, 'float32');
  const dUp = backend.makeOutput(gate.shape, 'float32');
  backend.launch({
    name: 'swiglu_grad',
    source: swigluSource,
    grid: gridFor(byFour(n) ? n / 4 : n),
    block: 256,
    args: [arg.ptr(backend.ptr(dGate)), arg.ptr(backend.ptr(dUp)), arg.ptr(backend.ptr(dy)), arg.ptr(backend.ptr(gate)), arg.ptr(backend.ptr(up)), arg.i32(n)],
  });
  return [dGate, dUp];
}

export function rotarySource(): string {
  return `${PRELUDE}
// x [batch·heads, seq, d]; lane i of position p pairs with σ(i) = i ± d/2. Forward reads sin at i, the transpose at σ(i).
extern "C" __global__ void rotary(float *__restrict__ y, const float *__restrict__ x, const float *__restrict__ cosT, const float *__restrict__ sinT, int n, int seq, int d, int transposed) {
  int half = d / 2;
  if ((half & 3) == 0) {
    // Four lanes a thread: they lie in one half, and so do their partners.
    GRID_STRIDE4(q, n >> 2) {
      int i = 4 * q;
      unsigned int row_ = (unsigned int)i / (unsigned int)d;
      int lane = i - (int)(row_ * (unsigned int)d), p = (int)(row_ % (unsigned int)seq);
      int other = lane < half ? lane + half : lane - half;
      float xv[4], xo[4], c[4], sn[4], out[4];
      load4(xv, x + i);
      load4(xo, x + (i - lane) + other);
      load4(c, cosT + p * d + lane);
      load4(sn, sinT + p * d + (transposed ? other : lane));
      for (int k = 0; k < 4; k++) out[k] = xv[k] * c[k] + xo[k] * sn[k];
      store4(y + i, out);
    }
    return;
  }
  GRID_STRIDE(i, n) {
    unsigned int u = (unsigned int)i, row_ = u / (unsigned int)d;
    int lane = (int)(u - row_ * (unsigned int)d);
    int p = (int)(row_ % (unsigned int)seq);
    int other = lane < half ? lane + half : lane - half;
    i64 row = i - lane;
    float s = transposed ? sinT[p * d + other] : sinT[p * d + lane];
    y[i] = x[i] * cosT[p * d + lane] + x[row + other] * s;
  }
}`;
}

export function rotaryEmbedding(backend: CudaBackend, x: tf.TensorInfo, cos: tf.TensorInfo, sin: tf.TensorInfo, transposed: boolean): tf.TensorInfo {
  const n = tf.util.sizeFromShape(x.shape);
  const [, , seq, d] = x.shape;
  const y = backend.makeOutput(x.shape, 'float32');
  backend.launch({
    name: 'rotary',
    source: rotarySource,
    grid: gridFor(byFour(d / 2) ? n / 4 : n),
    block: 256,
    args: [
      arg.ptr(backend.ptr(y)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(cos)),
      arg.ptr(backend.ptr(sin)),
      arg.i32(n),
      arg.i32(seq),
      arg.i32(d),
      arg.i32(transposed ? 1 : 0),
    ],
  });
  return y;
}

export function causalSoftmaxSource(): string {
  return `${PRELUDE}
// A block per row of [b, h, q, k]; positions from the two int arrays when given, else the row and column indices.
__device__ __forceinline__ bool visible(int qp, int kp, int window) { return kp <= qp && qp - kp < window; }
__device__ __forceinline__ int queryPos(const int *qps, int row, int q) { return qps ? qps[row % q] : row % q; }
// The probabilities feed the product with v: their 16-bit twin, when asked for, is written in the last pass.
extern "C" __global__ void causal_softmax(float *__restrict__ probs, unsigned short *__restrict__ half, int bf16, const float *__restrict__ scores, const int *qps, const int *kps, int q, int k, float scale, int window) {
  i64 base = (i64)blockIdx.x * k;
  int qp = queryPos(qps, blockIdx.x, q);
  float m = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < k; j += blockDim.x) if (visible(qp, kps ? kps[j] : j, window)) m = fmaxf(m, scores[base + j] * scale);
  m = blockMax(m);
  float s = 0.0f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) if (visible(qp, kps ? kps[j] : j, window)) s += expf(scores[base + j] * scale - m);
  s = blockSum(s);
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    float p = visible(qp, kps ? kps[j] : j, window) ? expf(scores[base + j] * scale - m) / s : 0.0f;
    probs[base + j] = p;
    writeHalf(half, base + j, p, bf16);
  }
}
extern "C" __global__ void causal_softmax_grad(float *__restrict__ dScores, const float *__restrict__ dProbs, const float *__restrict__ probs, const int *qps, const int *kps, int q, int k, float scale, int window) {
  i64 base = (i64)blockIdx.x * k;
  int qp = queryPos(qps, blockIdx.x, q);
  float d = 0.0f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) d += dProbs[base + j] * probs[base + j];
  d = blockSum(d);
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    float p = probs[base + j];
    dScores[base + j] = visible(qp, kps ? kps[j] : j, window) ? (dProbs[base + j] * p - d * p) * scale : 0.0f;
  }
}`;
}

export function causalSoftmax(backend: CudaBackend, inputs: Record<string, tf.TensorInfo>, attrs: CausalSoftmaxAttrs, grad: boolean): tf.TensorInfo {
  const main = grad ? inputs.probs : inputs.scores;
  const [, , q, k] = main.shape;
  const rows = tf.util.sizeFromShape(main.shape) / k;
  const out = backend.makeOutput(main.shape, 'float32');
  const qp = inputs.queryPositions ? backend.ptr(inputs.queryPositions) : 0n;
  const kp = inputs.keyPositions ? backend.ptr(inputs.keyPositions) : 0n;
  const data = grad ? [backend.ptr(inputs.dProbs), backend.ptr(inputs.probs)] : [backend.ptr(inputs.scores)];
  backend.launch({
    name: grad ? 'causal_softmax_grad' : 'causal_softmax',
    source: causalSoftmaxSource,
    grid: rows,
    block: k >= 1024 ? 256 : 64,
    args: [
      arg.ptr(backend.ptr(out)),
      ...(grad ? [] : halfTwinArgs(backend, out)),
      ...data.map(arg.ptr),
      arg.ptr(qp),
      arg.ptr(kp),
      arg.i32(q),
      arg.i32(k),
      arg.f32(attrs.scale),
      arg.i32(attrs.window),
    ],
  });
  return out;
}

export function attentionSources(): { name: string; source: string }[] {
  return [
    { name: 'swiglu', source: swigluSource() },
    { name: 'rotary', source: rotarySource() },
    { name: 'causal_softmax', source: causalSoftmaxSource() },
  ];
}
