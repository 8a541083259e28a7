/**
 * The forward of the fused KD loss: one workgroup of 256 threads per row reads the row's student and teacher logits
 * and writes the per-row divergence at τ (and the next-token CE when labels are given), never forming p_s, p_t or
 * their logs as [rows, V] tensors.
 *
 * Forward and reverse KL read each logit once. With online log-sum-exps (running max m, running z = Σ exp(x − m),
 * rescaled when m grows) each thread also accumulates, for the side P that weights the divergence (the teacher for
 * the forward KL, the student for the reverse),
 *   acc = Σ e_P·((x_P − x_Q) − (m_P − m_Q)),  e_P = exp(x_P − m_P),
 * shifted whenever either running max moves, so that at the end
 *   KL(P ‖ Q) = acc / z_P − log(z_P / z_Q).
 * No term involves a logit's size, only differences (t − s, m_P − m_Q), so ±80 logits lose nothing, and the final
 * cancellation is against log(z_P / z_Q), not against two log-sum-exps of ~83 (whose rounding alone is 4e-6).
 * JSD and skew KL need the mixture m = w·p_t + (1 − w)·p_s at every element, which needs both log-sum-exps first:
 * they read the row a second time (from cache, mostly).
 *
 * Output: the per-row values [rows, 1] (or [rows, 2] with the CE) in the `values` layout, or the statistics the
 * backward needs [rows, STAT_COLUMNS] in the `stats` layout (softmaxKlWgsl.ts).
 */
import type { SoftmaxKlLayout } from '../../ops/softmaxKl.ts';
import type { WebGPUProgram } from './program.ts';
import { lanes, preludeWgsl, STAT, STAT_COLUMNS, UNIFORMS, variantKey, WORKGROUP, type SoftmaxKlVariant } from './softmaxKlWgsl.ts';

export type ForwardLayout = SoftmaxKlLayout;

export function forwardColumns(v: SoftmaxKlVariant, layout: ForwardLayout): number {
  if (layout === 'stats') return STAT_COLUMNS;
  return v.ce === 'none' ? 1 : 2;
}

export class SoftmaxKlForwardProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents?: number[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = UNIFORMS;

  constructor(
    rows: number,
    private readonly variant: SoftmaxKlVariant,
    private readonly layout: ForwardLayout,
  ) {
    this.variableNames = ['s', 't'];
    if (variant.masked) this.variableNames.push('mask');
    if (variant.ce !== 'none') this.variableNames.push('labels');
    if (variant.vec4) this.variableComponents = this.variableNames.map((n) => (n === 's' || n === 't' ? 4 : 1));
    this.outputShape = [rows, forwardColumns(variant, layout)];
    this.dispatch = [rows, 1, 1];
    this.shaderKey = `softmaxKlForward_${variantKey(variant)}_${layout}`;
  }

  getUserCode(): string {
    const v = this.variant;
    const n = lanes(v);
    const singlePass = v.kind === 'forward_kl' || v.kind === 'reverse_kl';
    // P weights the divergence; for the two-pass kinds any side will do (only the log-sum-exps are used).
    const pIsTeacher = v.kind !== 'reverse_kl';
    const [xP, xQ] = pIsTeacher ? ['b', 'a'] : ['a', 'b'];
    const ownCe = v.ce === 'own';
    const sAt = v.vec4 ? (i: string) => `s[sBase + ${i} / 4][${i} % 4]` : (i: string) => `s[sBase + ${i}]`;
    const [max1, logZ1] = v.ce === 'shared' ? ['maxS', 'logZS'] : ownCe ? ['r.m1', 'log(r.z1)'] : ['0.0', '0.0'];
    const out =
      this.layout === 'stats'
        ? [
            [STAT.value, 'value'],
            [STAT.ce, 'ce'],
            [STAT.maxStudent, 'maxS'],
            [STAT.logZStudent, 'logZS'],
            [STAT.maxTeacher, 'maxT'],
            [STAT.logZTeacher, 'logZT'],
            [STAT.rowSum, 'rowSum'],
            [STAT.maxCe, max1],
            [STAT.logZCe, logZ1],
          ]
        : v.ce === 'none'
          ? [[0, 'value']]
          : [
              [0, 'value'],
              [1, 'ce'],
            ];
    // x_P − x_Q from the raw logits: for close distributions t − s is exact, (t/τ) − (s/τ) is not.
    const diffPQ = `(${pIsTeacher ? 'tv - sv' : 'sv - tv'}) * uniforms.invTau`;
    const cols = this.outputShape[1];
    return `
    ${preludeWgsl(v)}
    const WG = ${WORKGROUP};
    // Running max and Σ exp(x − max) of both sides (P, Q), the shifted divergence sum, and the CE's log-sum-exp.
    struct Online { mP : f32, zP : f32, mQ : f32, zQ : f32, acc : f32, m1 : f32, z1 : f32, };
    var<workgroup> partial : array<Online, WG>;
    ${singlePass ? '' : 'var<workgroup> sums : array<vec2<f32>, WG>;'}

    fn merge(x : Online, y : Online) -> Online {
      let mP = max(x.mP, y.mP);
      let mQ = max(x.mQ, y.mQ);
      let m1 = max(x.m1, y.m1);
      let rx = exp(x.mP - mP);
      let ry = exp(y.mP - mP);
      // Each side's acc was shifted by its own maxes; re-shift to the common ones before adding.
      let acc = rx * (x.acc + x.zP * ((x.mP - mP) - (x.mQ - mQ))) + ry * (y.acc + y.zP * ((y.mP - mP) - (y.mQ - mQ)));
      return Online(mP, rx * x.zP + ry * y.zP, mQ, x.zQ * exp(x.mQ - mQ) + y.zQ * exp(y.mQ - mQ), acc,
                    m1, x.z1 * exp(x.m1 - m1) + y.z1 * exp(y.m1 - m1));
    }

    fn pushCe(st : Online, x : T) -> Online {
      var o = st;
      o.m1 = max(st.m1, hmax(x));
      o.z1 = st.z1 * exp(st.m1 - o.m1) + hsum(exp(x - o.m1));
      return o;
    }

    // tfjs's generated entry point calls main with the global invocation index.
    fn main(index : i32) {
      let row = index / WG;
      let tid = i32(localId.x);
      let inRange = row < uniforms.outShape.x;
      let live = inRange${v.masked ? ' && mask[min(row, uniforms.outShape.x - 1) + uniforms.rowOffset] > 0.0' : ''};
      // Reads per row in T units; a masked row reads nothing.
      let cols = select(0, uniforms.sharedCols / ${n}, live);
      let sBase = row * (uniforms.sShape.y / ${n});
      let tBase = row * (uniforms.tShape.y / ${n});
      var st = Online(NEG_BIG, 0.0, NEG_BIG, 0.0, 0.0, NEG_BIG, 0.0);
      for (var c = tid; c < cols; c += WG) {
        let sv = s[sBase + c];
        let tv = t[tBase + c];
        let a = sv * uniforms.invTau;
        let b = tv * uniforms.invTau;
        let mP = max(st.mP, hmax(${xP}));
        let mQ = max(st.mQ, hmax(${xQ}));
        let rP = exp(st.mP - mP);
        let eP = exp(${xP} - mP);
        ${singlePass ? `st.acc = rP * (st.acc + st.zP * ((st.mP - mP) - (st.mQ - mQ))) + hsum(eP * (${diffPQ} - (mP - mQ)));` : ''}
        st.zP = rP * st.zP + hsum(eP);
        st.zQ = st.zQ * exp(st.mQ - mQ) + hsum(exp(${xQ} - mQ));
        st.mP = mP;
        st.mQ = mQ;
        ${ownCe ? 'st = pushCe(st, sv);' : ''}
      }
      ${
        ownCe
          ? `// The CE also covers the student's ids past the shared vocabulary.
      let allCols = select(0, uniforms.sShape.y / ${n}, live);
      for (var c = cols + tid; c < allCols; c += WG) {
        st = pushCe(st, s[sBase + c]);
      }`
          : ''
      }
      partial[tid] = st;
      workgroupBarrier();
      for (var stride = WG / 2; stride > 0; stride = stride / 2) {
        if (tid < stride) {
          partial[tid] = merge(partial[tid], partial[tid + stride]);
        }
        workgroupBarrier();
      }
      let r = partial[0];
      let maxT = ${pIsTeacher ? 'r.mP' : 'r.mQ'};
      let logZT = log(${pIsTeacher ? 'r.zP' : 'r.zQ'});
      let maxS = ${pIsTeacher ? 'r.mQ' : 'r.mP'};
      let logZS = log(${pIsTeacher ? 'r.zQ' : 'r.zP'});
      ${singlePass ? this.singlePassValue() : this.secondPass()}
      if (tid == 0 && inRange) {
        var ce = 0.0;
        ${
          v.ce === 'none'
            ? ''
            : `let label = clamp(labels[row + uniforms.rowOffset], 0, uniforms.sShape.y - 1);
        ce = (${max1} - ${sAt('label')}) + ${logZ1};`
        }
        ${out.map(([col, expr]) => `setOutputAtIndex(row * ${cols} + ${col}, select(0.0, ${expr}, live));`).join('\n        ')}
      }
    }`;
  }

  /** Forward or reverse KL from the single pass; the reverse KL's gradient needs the value itself as its row sum. */
  private singlePassValue(): string {
    return `
      let value = r.acc / r.zP - log(r.zP / r.zQ);
      let rowSum = ${this.variant.kind === 'reverse_kl' ? 'value' : '0.0'};`;
  }

  /**
   * JSD(β) = Σ β·p_t·(log p_t − log m) + u, u = (1 − β)·p_s·(log p_s − log m), with Σu kept for the gradient;
   * skew KL(λ) = Σ p_t·(log p_t − log m), with Σw, w = (1 − λ)·p_t·p_s / m, kept for the gradient.
   */
  private secondPass(): string {
    const jsd = this.variant.kind === 'jsd';
    const body = jsd
      ? `let u = exp(lps) * (lps - lm) * (1.0 - uniforms.mixW);
          vs += vec2<f32>(hsum(uniforms.mixW * exp(lpt) * (lpt - lm) + u), hsum(u));`
      : `vs += vec2<f32>(hsum(exp(lpt) * (lpt - lm)), hsum(exp(lpt + lps + uniforms.log1mMixW - lm)));`;
    return `
      var vs = vec2<f32>(0.0);
      for (var c = tid; c < cols; c += WG) {
        let lps = (s[sBase + c] * uniforms.invTau - maxS) - logZS;
        let lpt = (t[tBase + c] * uniforms.invTau - maxT) - logZT;
        let lm = logMix(lpt, lps);
        ${body}
      }
      sums[tid] = vs;
      workgroupBarrier();
      for (var stride = WG / 2; stride > 0; stride = stride / 2) {
        if (tid < stride) {
          sums[tid] = sums[tid] + sums[tid + stride];
        }
        workgroupBarrier();
      }
      let value = sums[0].x;
      let rowSum = sums[0].y;`;
  }
}
