/**
 * The element-wise and row-wise kernels of a transformer layer under the contracts of src/ops: SwiGLU (forward and
 * both gradients in one pass), rotary embedding (forward and its transpose), and attention's causal softmax with
 * the mask worked out from positions (forward and backward).
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../../backend.ts';
import { gridFor, PRELUDE } from '../prelude.ts';
import type { CausalSoftmaxAttrs } from '../../../../ops/causalSoftmax.ts';

export function swigluSource(): string {
  return `${PRELUDE}
__device__ __forceinline__ float sigmoidOf(float g) { return 1.0f / (1.0f + expf(-g)); }
extern "C" __global__ void swiglu(float *__restrict__ y, const float *__restrict__ gate, const float *__restrict__ up, i64 n) {
  GRID_STRIDE(i, n) { float g = gate[i]; y[i] = g * sigmoidOf(g) * up[i]; }
}
extern "C" __global__ void swiglu_grad(float *__restrict__ dGate, float *__restrict__ dUp, const float *__restrict__ dy, const float *__restrict__ gate, const float *__restrict__ up, i64 n) {
  GRID_STRIDE(i, n) {
    float g = gate[i], s = sigmoidOf(g), d = dy[i];
    dGate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    dUp[i] = d * g * s;
  }
}`;
}

export function swiglu(backend: CudaBackend, gate: tf.TensorInfo, up: tf.TensorInfo): tf.TensorInfo {
  const n = tf.util.sizeFromShape(gate.shape);
  const y = backend.makeOutput(gate.shape, 'float32');
  backend.launch({
    name: 'swiglu',
    source: swigluSource,
    grid: gridFor(n),
    block: 256,
    args: [arg.ptr(backend.ptr(y)), arg.ptr(backend.ptr(gate)), arg.ptr(backend.ptr(up)), arg.i64(n)],
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
    grid: gridFor(n),
    block: 256,
    args: [arg.ptr(backend.ptr(dGate)), arg.ptr(backend.ptr(dUp)), arg.ptr(backend.ptr(dy)), arg.ptr(backend.ptr(gate)), arg.ptr(backend.ptr(up)), arg.i64(n)],
  });
  return [dGate, dUp];
}

export function rotarySource(): string {
  return `${PRELUDE}
// x [batch·heads, seq, d]; lane i of position p pairs with σ(i) = i ± d/2. Forward reads sin at i, the transpose at σ(i).
extern "C" __global__ void rotary(float *__restrict__ y, const float *__restrict__ x, const float *__restrict__ cosT, const float *__restrict__ sinT, i64 n, int seq, int d, int transposed) {
  int half = d / 2;
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
    grid: gridFor(n),
    block: 256,
    args: [
      arg.ptr(backend.ptr(y)),
      arg.ptr(backend.ptr(x)),
      arg.ptr(backend.ptr(cos)),
      arg.ptr(backend.ptr(sin)),
      arg.i64(n),
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
extern "C" __global__ void causal_softmax(float *__restrict__ probs, const float *__restrict__ scores, const int *qps, const int *kps, int q, int k, float scale, int window) {
  i64 base = (i64)blockIdx.x * k;
  int qp = queryPos(qps, blockIdx.x, q);
  float m = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < k; j += blockDim.x) if (visible(qp, kps ? kps[j] : j, window)) m = fmaxf(m, scores[base + j] * scale);
  m = blockMax(m);
  float s = 0.0f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) if (visible(qp, kps ? kps[j] : j, window)) s += expf(scores[base + j] * scale - m);
  s = blockSum(s);
  for (int j = threadIdx.x; j < k; j += blockDim.x) probs[base + j] = visible(qp, kps ? kps[j] : j, window) ? expf(scores[base + j] * scale - m) / s : 0.0f;
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
    args: [arg.ptr(backend.ptr(out)), ...data.map(arg.ptr), arg.ptr(qp), arg.ptr(kp), arg.i32(q), arg.i32(k), arg.f32(attrs.scale), arg.i32(attrs.window)],
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
