/**
 * BatchMatMul on cuBLAS. Batch dimensions broadcast as tfjs's: equal batches stride through both operands, a
 * batch of one is reused (stride 0), and any other broadcast is materialised first. With a mixed precision the
 * operands are converted to bf16 (or f16) on the device per product; the output and its accumulation stay fp32.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend, type KernelArg } from '../backend.ts';
import {
  CUBLAS_COMPUTE_32F,
  CUBLAS_COMPUTE_32F_FAST_16BF,
  CUBLAS_COMPUTE_32F_FAST_16F,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
  type GemmOperand,
} from '../cublas.ts';
import { byFour, gridFor, PRELUDE } from './prelude.ts';
import { broadcastTo } from './layout.ts';

/** NeMo's trainer.precision values, as far as matmuls go. */
export type CudaMatMulPrecision = '32' | 'bf16-mixed' | '16-mixed';

let precision: CudaMatMulPrecision = '32';
export function setCudaMatMulPrecision(p: CudaMatMulPrecision): void {
  precision = p;
}
export function cudaMatMulPrecision(): CudaMatMulPrecision {
  return precision;
}

export function toHalfSource(name: string, bf16: boolean): string {
  const f = bf16 ? 'toBf16' : 'toF16';
  return `${PRELUDE}
extern "C" __global__ void ${name}(unsigned short *__restrict__ y, const float *__restrict__ x, int n) {
  if ((n & 3) == 0) {
    GRID_STRIDE4(q, n >> 2) {
      float v[4];
      load4(v, x + 4 * q);
      uint2 packed;
      packed.x = (unsigned int)${f}(v[0]) | ((unsigned int)${f}(v[1]) << 16);
      packed.y = (unsigned int)${f}(v[2]) | ((unsigned int)${f}(v[3]) << 16);
      *reinterpret_cast<uint2 *>(y + 4 * q) = packed;
    }
  } else GRID_STRIDE(i, n) { y[i] = ${f}(x[i]); }
}`;
}

/**
 * Past this size a tensor's 16-bit copy is made per product and freed after it rather than kept: at long sequences
 * the attention probabilities saved for the backward pass ([heads, T, T] per layer, 3.8 GB at T = 8192) would
 * otherwise hold half as much again in copies for the whole step (measured need: 174 GiB instead of 122 for the
 * Qwen2.5 pair at T = 8192). Below it (every tensor of config M) a copy is made once.
 */
const KEEP_HALF_BYTES = 2 ** 30;

function keepsHalf(x: tf.TensorInfo): boolean {
  return tf.util.sizeFromShape(x.shape) * 4 <= KEEP_HALF_BYTES;
}

/**
 * A 16-bit copy of x, held in a float32 tensor of half as many elements (the allocator counts 4-byte elements),
 * made once per tensor and freed with it.
 */
function toHalf(backend: CudaBackend, x: tf.TensorInfo, bf16: boolean): tf.TensorInfo {
  return backend.derivedFrom(x, bf16 ? 'bf16' : 'f16', () => convertToHalf(backend, x, bf16));
}

function convertToHalf(backend: CudaBackend, x: tf.TensorInfo, bf16: boolean): tf.TensorInfo {
  const n = tf.util.sizeFromShape(x.shape);
  const out = backend.makeOutput([Math.ceil(n / 2)], 'float32');
  const name = bf16 ? 'to_bf16' : 'to_f16';
  backend.launch({
    name,
    source: () => toHalfSource(name, bf16),
    grid: gridFor(byFour(n) ? n / 4 : n),
    block: 256,
    args: [arg.ptr(backend.ptr(out)), arg.ptr(backend.ptr(x)), arg.i32(n)],
  });
  return out;
}

/**
 * A kernel whose output a product will read can write that output's 16-bit copy in the same pass, saving the
 * conversion's read of the fp32 tensor. When products take copies (bf16-mixed or 16-mixed, not `fast`), this makes
 * the copy, registers it as `out`'s (so the product finds it), and returns where to write and in which format;
 * otherwise null, and the kernel writes none.
 */
export function halfTwin(backend: CudaBackend, out: tf.TensorInfo): { ptr: bigint; bf16: boolean } | null {
  if (precision === '32' || process.env.DISTILL_CUDA_MIXED_MATMUL === 'fast' || !keepsHalf(out)) return null;
  const bf16 = precision === 'bf16-mixed';
  const half = backend.makeOutput([Math.ceil(tf.util.sizeFromShape(out.shape) / 2)], 'float32');
  backend.derivedFrom(out, bf16 ? 'bf16' : 'f16', () => half);
  return { ptr: backend.ptr(half), bf16 };
}

/** The kernel arguments of a possible twin: its pointer (0 for none) and 1 for bf16, 0 for f16. */
export function halfTwinArgs(backend: CudaBackend, out: tf.TensorInfo): KernelArg[] {
  const twin = halfTwin(backend, out);
  return [arg.ptr(twin?.ptr ?? 0n), arg.i32(twin?.bf16 === false ? 0 : 1)];
}

export function batchMatMul(backend: CudaBackend, a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean): tf.TensorInfo {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (k !== kb)
    throw new Error(`BatchMatMul: inner dimensions ${k} and ${kb} differ ([${a.shape}]${transposeA ? 'ᵀ' : ''} · [${b.shape}]${transposeB ? 'ᵀ' : ''})`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batchShape = tf.backend_util.assertAndGetBroadcastShape(batchA, batchB);
  const batch = tf.util.sizeFromShape(batchShape);
  const sizeA = tf.util.sizeFromShape(batchA);
  const sizeB = tf.util.sizeFromShape(batchB);
  // Batches that are neither equal nor one matrix: spread them out to the full batch first.
  let A = a;
  let B = b;
  if (sizeA !== batch && sizeA !== 1) A = broadcastTo(backend, a, [...batchShape, ...a.shape.slice(-2)]);
  if (sizeB !== batch && sizeB !== 1) B = broadcastTo(backend, b, [...batchShape, ...b.shape.slice(-2)]);
  const out = backend.makeOutput([...batchShape, m, n], 'float32');
  if (m * n * batch > 0) {
    const bf16 = precision === 'bf16-mixed';
    // Two ways to the tensor cores: our own bf16 copies of the operands (kept per tensor), or fp32 operands that
    // cuBLAS rounds itself (DISTILL_CUDA_MIXED_MATMUL=fast: no copies, CUBLAS_COMPUTE_32F_FAST_16BF).
    const fast = precision !== '32' && process.env.DISTILL_CUDA_MIXED_MATMUL === 'fast';
    const half = precision !== '32' && !fast;
    const computeType = fast ? (bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_FAST_16F) : CUBLAS_COMPUTE_32F;
    const type = half ? (bf16 ? CUDA_R_16BF : CUDA_R_16F) : CUDA_R_32F;
    const halfOf = (t: tf.TensorInfo): tf.TensorInfo => (keepsHalf(t) ? toHalf(backend, t, bf16) : convertToHalf(backend, t, bf16));
    const opA = half ? halfOf(A) : A;
    const opB = half ? halfOf(B) : B;
    const operand = (t: tf.TensorInfo, source: tf.TensorInfo, transposed: boolean, own: number): GemmOperand => ({
      ptr: backend.ptr(t),
      type,
      transposed,
      batchStride: tf.util.sizeFromShape(source.shape.slice(0, -2)) === 1 && batch > 1 ? 0 : own,
    });
    if (k === 0) backend.driver.fill32(backend.ptr(out), 0, m * n * batch);
    else {
      const name = `cublas ${precision === '32' ? 'fp32' : `${bf16 ? 'bf16' : 'f16'}${fast ? ' (fast)' : ''}`} [${batch}] ${m}x${k}${transposeA ? 'ᵀ' : ''} · ${k}x${n}${transposeB ? 'ᵀ' : ''}`;
      backend.timed(name, () =>
        backend.blas.gemm(backend.ptr(out), operand(opA, A, transposeA, m * k), operand(opB, B, transposeB, k * n), m, n, k, batch, computeType),
      );
    }
    if (half && !keepsHalf(A)) backend.disposeIntermediate(opA);
    if (half && !keepsHalf(B)) backend.disposeIntermediate(opB);
  }
  if (A !== a) backend.disposeIntermediate(A);
  if (B !== b) backend.disposeIntermediate(B);
  return out;
}

export function matMulSources(): { name: string; source: string }[] {
  return [
    { name: 'to_bf16', source: toHalfSource('to_bf16', true) },
    { name: 'to_f16', source: toHalfSource('to_f16', false) },
  ];
}
