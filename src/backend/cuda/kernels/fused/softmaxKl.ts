/**
 * The fused softmax + KD divergence (+ next-token CE) of the chunked loss, under the contract written in
 * src/ops/softmaxKl.ts: a block per row of student and teacher logits. Forward: the two maxima, the two log-sums,
 * then one pass for the divergence (and the CE's own pass when it does not share the student's statistics).
 * Backward: one element-wise pass from the saved statistics. Specialised per divergence and CE mode.
 */
import * as tf from '@tensorflow/tfjs-core';
import { arg, type CudaBackend } from '../../backend.ts';
import { PRELUDE } from '../prelude.ts';
import { mixture, type SoftmaxKlAttrs } from '../../../../ops/softmaxKl.ts';

const KINDS = ['forward_kl', 'reverse_kl', 'jsd', 'skew_kl'] as const;
const CES = ['none', 'shared', 'own'] as const;
type Kind = (typeof KINDS)[number];
type Ce = (typeof CES)[number];

/** Per element: lps, lpt, and for the mixtures lm; then the divergence's summand and its row-sum term. */
function elementTerms(kind: Kind): string {
  const mix = `float x = lpt + logW, y = lps + log1mW, mm = fmaxf(x, y), lm = mm + logf(expf(x - mm) + expf(y - mm));`;
  switch (kind) {
    case 'forward_kl':
      return 'float term = expf(lpt) * (lpt - lps), extra = 0.0f;';
    case 'reverse_kl':
      return 'float term = expf(lps) * (lps - lpt), extra = 0.0f;';
    case 'jsd':
      return `${mix} float u = expf(lps) * (lps - lm) * (1.0f - w); float term = expf(lpt) * (lpt - lm) * w + u, extra = u;`;
    case 'skew_kl':
      return `${mix} float term = expf(lpt) * (lpt - lm), extra = expf(lpt + lps + log1mW - lm);`;
  }
}

function gradientTerm(kind: Kind): string {
  const mix = `float x = lpt + logW, y = lps + log1mW, mm = fmaxf(x, y), lm = mm + logf(expf(x - mm) + expf(y - mm));`;
  switch (kind) {
    case 'forward_kl':
      return 'float gk = expf(lps) - expf(lpt);';
    case 'reverse_kl':
      return 'float gk = expf(lps) * ((lps - lpt) - rowSum);';
    case 'jsd':
      return `${mix} float u = expf(lps) * (lps - lm) * (1.0f - w); float gk = u - expf(lps) * rowSum;`;
    case 'skew_kl':
      return `${mix} float gk = expf(lps) * rowSum - expf(lpt + lps + log1mW - lm);`;
  }
}

const name = (pass: 'forward' | 'backward', kind: Kind, ce: Ce): string => `softmax_kl_${pass}_${kind}_${ce}`;

export function softmaxKlSource(kind: Kind, ce: Ce): string {
  const hasCe = ce !== 'none';
  return `${PRELUDE}
#ifndef SOFTMAX_KL_HELPERS
#define SOFTMAX_KL_HELPERS
__device__ __forceinline__ bool liveRow(const float *mask, int row) { return mask == 0 || mask[row] > 0.0f; }
// m = max_j v_j·f and log Σ exp(v_j·f − m) over j < n.
__device__ void maxLogZ(const float *v, int n, float f, float &m, float &logZ) {
  float a = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < n; j += blockDim.x) a = fmaxf(a, v[j] * f);
  m = blockMax(a);
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(v[j] * f - m);
  logZ = logf(blockSum(s));
}
// The running max x and sum z of exp(v − x), updated by one value (online softmax: one read instead of two).
__device__ __forceinline__ void online(float v, float &x, float &z) {
  if (v > x) { z = z * expf(x - v) + 1.0f; x = v; } else z += expf(v - x);
}
// The pair (x, z) over the block: the max, and each thread's sum rescaled to it.
__device__ __forceinline__ void blockOnline(float x, float z, float &m, float &logZ) {
  m = blockMax(x);
  logZ = logf(blockSum(z == 0.0f ? 0.0f : z * expf(x - m)));
}
// maxLogZ of s and of t together, over j < n, in one pass over both rows (four at a time where the row allows).
__device__ void maxLogZ2(const float *s, const float *t, int n, float f, float &ms, float &ls, float &mt, float &lt) {
  float xs = -__int_as_float(0x7f800000), zs = 0.0f, xt = xs, zt = 0.0f;
  if ((n & 3) == 0 && ((((unsigned long long)s) | ((unsigned long long)t)) & 15) == 0) {
    for (int j = 4 * threadIdx.x; j < n; j += 4 * blockDim.x) {
      float a[4], b[4];
      load4(a, s + j);
      load4(b, t + j);
      for (int k = 0; k < 4; k++) { online(a[k] * f, xs, zs); online(b[k] * f, xt, zt); }
    }
  } else
    for (int j = threadIdx.x; j < n; j += blockDim.x) { online(s[j] * f, xs, zs); online(t[j] * f, xt, zt); }
  blockOnline(xs, zs, ms, ls);
  blockOnline(xt, zt, mt, lt);
}
#endif
extern "C" __global__ void ${name('forward', kind, ce)}(float *__restrict__ out, const float *__restrict__ s, const float *__restrict__ t, const float *mask, const int *labels,
    int vs, int vt, float invTau, float w, float logW, float log1mW, int rowOffset, int statsLayout) {
  int r = blockIdx.x, width = ${hasCe ? 2 : 1}, columns = statsLayout ? 9 : width;
  float *o = out + (i64)r * columns;
  if (!liveRow(mask, rowOffset + r)) { if (threadIdx.x < columns) o[threadIdx.x] = 0.0f; return; }
  const float *sr = s + (i64)r * vs, *tr = t + (i64)r * vt;
  int W = min(vs, vt);
  float ms, ls, mt, lt;
  maxLogZ2(sr, tr, W, invTau, ms, ls, mt, lt);
  float d = 0.0f, e = 0.0f;
  for (int j = threadIdx.x; j < W; j += blockDim.x) {
    float lps = (sr[j] * invTau - ms) - ls, lpt = (tr[j] * invTau - mt) - lt;
    ${elementTerms(kind)}
    d += term; e += extra;
  }
  d = blockSum(d);
  e = blockSum(e);
  float rowSum = ${kind === 'reverse_kl' ? 'd' : kind === 'forward_kl' ? '0.0f' : 'e'};
  float ce = 0.0f, mc = 0.0f, lc = 0.0f;
  ${ce === 'shared' ? 'mc = ms; lc = ls;' : ce === 'own' ? 'maxLogZ(sr, vs, 1.0f, mc, lc);' : ''}
  ${hasCe ? `int label = labels[rowOffset + r]; label = label < 0 ? 0 : (label > vs - 1 ? vs - 1 : label); ce = (mc - sr[label]) + lc;` : ''}
  if (threadIdx.x == 0) {
    o[0] = d;
    if (statsLayout) { o[1] = ce; o[2] = ms; o[3] = ls; o[4] = mt; o[5] = lt; o[6] = rowSum; o[7] = mc; o[8] = lc; }
    else if (width == 2) o[1] = ce;
  }
}
extern "C" __global__ void ${name('backward', kind, ce)}(float *__restrict__ g, const float *__restrict__ s, const float *__restrict__ t, const float *mask, const int *labels,
    const float *__restrict__ stats, const float *__restrict__ scale, int vs, int vt, float invTau, float w, float logW, float log1mW, int rowOffset) {
  int r = blockIdx.x;
  float *gr = g + (i64)r * vs;
  const float *sr = s + (i64)r * vs, *tr = t + (i64)r * vt, *st = stats + (i64)r * 9;
  int width = ${hasCe ? 2 : 1};
  bool live = liveRow(mask, rowOffset + r);
  float kdScale = scale[(i64)r * width] * invTau;
  float ceScale = ${hasCe ? 'scale[(i64)r * 2 + 1]' : '0.0f'};
  int label = ${hasCe ? 'labels[rowOffset + r]' : '-1'};
  int W = min(vs, vt);
  float ms = st[2], ls = st[3], mt = st[4], lt = st[5], rowSum = st[6], mc = st[7], lc = st[8];
  for (int j = threadIdx.x; j < vs; j += blockDim.x) {
    float v = 0.0f;
    if (live) {
      if (kdScale != 0.0f && j < W) {
        float lps = (sr[j] * invTau - ms) - ls, lpt = (tr[j] * invTau - mt) - lt;
        ${gradientTerm(kind)}
        v = gk * kdScale;
      }
      ${hasCe ? 'if (ceScale != 0.0f) v += (expf((sr[j] - mc) - lc) - (j == label ? 1.0f : 0.0f)) * ceScale;' : ''}
    }
    gr[j] = v;
  }
}`;
}

export function softmaxKl(backend: CudaBackend, inputs: Record<string, tf.TensorInfo>, attrs: SoftmaxKlAttrs, backward: boolean): tf.TensorInfo {
  const { s, t, mask, labels } = inputs;
  const [rows, vs] = s.shape;
  const vt = t.shape[1];
  const { w, logW, log1mW } = mixture(attrs.mixW);
  const width = attrs.ce === 'none' ? 1 : 2;
  const out = backend.makeOutput(backward ? [rows, vs] : [rows, attrs.layout === 'stats' ? 9 : width], 'float32');
  const common = [arg.ptr(backend.ptr(s)), arg.ptr(backend.ptr(t)), arg.ptr(mask ? backend.ptr(mask) : 0n), arg.ptr(labels ? backend.ptr(labels) : 0n)];
  const mix = [arg.f32(attrs.invTau), arg.f32(w), arg.f32(logW), arg.f32(log1mW), arg.i32(attrs.rowOffset)];
  const args = backward
    ? [arg.ptr(backend.ptr(out)), ...common, arg.ptr(backend.ptr(inputs.stats)), arg.ptr(backend.ptr(inputs.scale)), arg.i32(vs), arg.i32(vt), ...mix]
    : [arg.ptr(backend.ptr(out)), ...common, arg.i32(vs), arg.i32(vt), ...mix, arg.i32(attrs.layout === 'stats' ? 1 : 0)];
  backend.launch({
    name: name(backward ? 'backward' : 'forward', attrs.kind, attrs.ce),
    source: () => softmaxKlSource(attrs.kind, attrs.ce),
    grid: rows,
    block: Math.max(vs, vt) >= 4096 ? 512 : 128,
    args,
  });
  return out;
}

export function softmaxKlSources(): { name: string; source: string }[] {
  return KINDS.flatMap((kind) => CES.map((ce) => ({ name: name('forward', kind, ce), source: softmaxKlSource(kind, ce) })));
}
