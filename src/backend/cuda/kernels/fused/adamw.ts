/**
 * One parameter's AdamW step in one pass, under the contract of src/ops/adamwUpdate.ts: reads p, g, m, v once and
 * writes p', m', v', where the composition runs a dozen element-wise kernels over the parameter. The arithmetic
 * is the composition's, in its order, on float32 constants.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../../backend.ts';
import { gridFor, PRELUDE } from '../prelude.ts';
import type { AdamWUpdateAttrs } from '../../../../ops/adamwUpdate.ts';

export function adamwSource(): string {
  return `${PRELUDE}
extern "C" __global__ void adamw_update(float *__restrict__ pOut, float *__restrict__ mOut, float *__restrict__ vOut,
    const float *__restrict__ p, const float *__restrict__ g, const float *__restrict__ m, const float *__restrict__ v, i64 n,
    float beta1, float oneMinusBeta1, float beta2, float oneMinusBeta2, float eps, float decayFactor, float stepSize, float sqrtBc2, int decays, float gradScale, int scales) {
  GRID_STRIDE(i, n) {
    float gi = scales ? __fmul_rn(g[i], gradScale) : g[i];
    float decayed = decays ? p[i] * decayFactor : p[i];
    float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(gi, oneMinusBeta1));
    float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(gi, gi), oneMinusBeta2));
    float denom = __fadd_rn(__fdiv_rn(sqrtf(vi), sqrtBc2), eps);
    pOut[i] = __fsub_rn(decayed, __fmul_rn(__fdiv_rn(mi, denom), stepSize));
    mOut[i] = mi; vOut[i] = vi;
  }
}`;
}

export function adamwUpdate(
  backend: CudaBackend,
  p: tf.TensorInfo,
  g: tf.TensorInfo,
  m: tf.TensorInfo,
  v: tf.TensorInfo,
  a: AdamWUpdateAttrs,
): tf.TensorInfo[] {
  const n = tf.util.sizeFromShape(p.shape);
  const outs = [p, m, v].map(() => backend.makeOutput(p.shape, 'float32'));
  backend.launch({
    name: 'adamw_update',
    source: adamwSource,
    grid: gridFor(n),
    block: 256,
    args: [
      ...outs.map((o) => arg.ptr(backend.ptr(o))),
      ...[p, g, m, v].map((t) => arg.ptr(backend.ptr(t))),
      arg.i64(n),
      arg.f32(a.beta1),
      arg.f32(1 - a.beta1),
      arg.f32(a.beta2),
      arg.f32(1 - a.beta2),
      arg.f32(a.eps),
      arg.f32(a.decayFactor),
      arg.f32(a.stepSize),
      arg.f32(a.sqrtBc2),
      arg.i32(a.decayFactor !== 1 ? 1 : 0),
      arg.f32(a.gradScale ?? 1),
      arg.i32((a.gradScale ?? 1) !== 1 ? 1 : 0),
    ],
  });
  return outs;
}

export function adamwSources(): { name: string; source: string }[] {
  return [{ name: 'adamw_update', source: adamwSource() }];
}
