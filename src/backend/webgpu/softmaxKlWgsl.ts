/**
 * What the fused softmax + divergence programs (softmaxKlForward.ts, softmaxKlBackward.ts) share: the variant that
 * selects their code, the per-row statistics they pass from the forward to the backward, their uniforms, and the
 * WGSL for the log-mixture and element types. Logits are read as `s` (student) and `t` (teacher), both raw; the
 * programs divide by τ themselves (a = s/τ, b = t/τ), so no [rows, V] tensor is scaled, exponentiated or logged
 * outside them.
 */
import type { SoftmaxKlCe, SoftmaxKlKind } from '../../ops/softmaxKl.ts';

export { STAT, STAT_COLUMNS } from '../../ops/softmaxKl.ts';

/** Threads per workgroup: one workgroup of 256 per row in the forward, 256 elements (or vec4s) per group backward. */
export const WORKGROUP = 256;

/** How the CE's log-sum-exp is had (the contract's attr `ce`). */
export type CeMode = SoftmaxKlCe;

/** Everything that changes a program's code; it all goes into the shaderKey (tfjs keys only ranks and dtypes). */
export interface SoftmaxKlVariant {
  /** skew_kl with λ = 0 is the forward KL exactly, and runs as it (log λ would be −inf in the shader). */
  kind: SoftmaxKlKind;
  /** Logits read as vec4<f32> (V_s, V_t and the shared width all multiples of 4). */
  vec4: boolean;
  /** A per-position mask input: rows with mask ≤ 0 are skipped and give zeros. */
  masked: boolean;
  ce: CeMode;
}

export function variantKey(v: SoftmaxKlVariant): string {
  return `${v.kind}_${v.vec4 ? 'v4' : 'v1'}_${v.masked ? 'm' : 'nm'}_ce${v.ce}`;
}

/**
 * Uniforms after tfjs's own (shapes and strides): 1/τ; the shared vocabulary width W (columns [0, W) of both
 * sides are compared); the chunk's first row in the mask and labels, which are given whole so that no chunk slices
 * them; the mixture weight w of JSD (β) or skew KL (λ) with log w and log(1 − w), taken on the host.
 */
export const UNIFORMS = 'invTau : f32, sharedCols : i32, rowOffset : i32, mixW : f32, logMixW : f32, log1mMixW : f32,';

export interface SoftmaxKlUniforms {
  invTau: number;
  sharedCols: number;
  rowOffset: number;
  mixW: number;
}

/** The uniform values in UNIFORMS' order, as runWebGPUProgram takes them. */
export function uniformData(u: SoftmaxKlUniforms): { type: 'float32' | 'int32'; data: number[] }[] {
  // Forward and reverse KL never read the weight; 0.5 keeps both logs finite.
  const w = u.mixW > 0 && u.mixW < 1 ? u.mixW : 0.5;
  return [
    { type: 'float32', data: [u.invTau] },
    { type: 'int32', data: [u.sharedCols] },
    { type: 'int32', data: [u.rowOffset] },
    { type: 'float32', data: [w] },
    { type: 'float32', data: [Math.log(w)] },
    { type: 'float32', data: [Math.log(1 - w)] },
  ];
}

/** Elements per read: 4 when the logits are read as vec4<f32>. */
export function lanes(v: SoftmaxKlVariant): number {
  return v.vec4 ? 4 : 1;
}

/**
 * `T`, the element type of a read, with its horizontal max and sum, and log(w·p_t + (1 − w)·p_s) from the two
 * log-probabilities, written as divergences.ts' logMixture is (max-shifted, pairwise) so the values agree.
 */
export function preludeWgsl(v: SoftmaxKlVariant): string {
  const horizontal = v.vec4
    ? `alias T = vec4<f32>;
    fn hmax(x : T) -> f32 { return max(max(x.x, x.y), max(x.z, x.w)); }
    fn hsum(x : T) -> f32 { return dot(x, T(1.0)); }`
    : `alias T = f32;
    fn hmax(x : T) -> f32 { return x; }
    fn hsum(x : T) -> f32 { return x; }`;
  return `
    ${horizontal}
    // Below every finite logit, yet finite itself: (−3e38) − (−3e38) is 0, not the NaN that −inf − −inf would be.
    const NEG_BIG = -3.0e38;
    fn logMix(lpt : T, lps : T) -> T {
      let x = lpt + uniforms.logMixW;
      let y = lps + uniforms.log1mMixW;
      let m = max(x, y);
      return m + log(exp(x - m) + exp(y - m));
    }`;
}
