/**
 * The backward of the fused KD loss: d loss / d z_s for every student logit, one thread per element (or vec4), from
 * the logits and the per-row statistics of the forward (log-sum-exps and the row sum each kind needs, see
 * softmaxKlWgsl.ts). Each row's upstream scale (the masked-mean weight times dy) comes in as `scale`; d/dz = d/da / τ
 * is folded into it. With a = s/τ, b = t/τ, log p = a − L_s and log q = b − L_t (divergences.ts derives these):
 *   forward KL: p_s − p_t
 *   reverse KL: p_s ⊙ (log p_s − log p_t − D)
 *   skew KL(λ): p_s·Σw − w,  w = (1 − λ)·p_t ⊙ p_s / m
 *   JSD(β):     u − p_s·Σu,  u = (1 − β)·p_s ⊙ (log p_s − log m)
 * plus, with labels, the CE's (softmax(z_s) − onehot(label)) times its own row scale (scale's second column).
 * Student ids past the shared vocabulary get the CE part only. Masked rows and rows whose scale is 0 get exactly
 * 0, even where their logits are not finite.
 */
import type { WebGPUProgram } from './program.ts';
import { lanes, preludeWgsl, STAT, STAT_COLUMNS, UNIFORMS, variantKey, WORKGROUP, type SoftmaxKlVariant } from './softmaxKlWgsl.ts';

export class SoftmaxKlBackwardProgram implements WebGPUProgram {
  variableNames: string[];
  variableComponents?: number[];
  outputComponent?: number;
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = UNIFORMS;
  size = true;

  constructor(
    rows: number,
    studentVocab: number,
    private readonly variant: SoftmaxKlVariant,
  ) {
    this.variableNames = ['s', 't', 'stats', 'scale'];
    if (variant.masked) this.variableNames.push('mask');
    if (variant.ce !== 'none') this.variableNames.push('labels');
    const n = lanes(variant);
    if (variant.vec4) {
      this.variableComponents = this.variableNames.map((name) => (name === 's' || name === 't' ? 4 : 1));
      this.outputComponent = 4;
    }
    this.outputShape = [rows, studentVocab];
    this.dispatch = [Math.ceil((rows * studentVocab) / n / WORKGROUP), 1, 1];
    this.shaderKey = `softmaxKlBackward_${variantKey(variant)}`;
  }

  getUserCode(): string {
    const v = this.variant;
    const n = lanes(v);
    const scales = v.ce === 'none' ? 1 : 2;
    const stat = (c: number): string => `stats[st + ${c}]`;
    const kd: Record<SoftmaxKlVariant['kind'], string> = {
      forward_kl: 'let gk = ps - exp(lpt);',
      reverse_kl: `let gk = ps * ((lps - lpt) - ${stat(STAT.rowSum)});`,
      skew_kl: `let lm = logMix(lpt, lps);
        let gk = ps * ${stat(STAT.rowSum)} - exp(lpt + lps + uniforms.log1mMixW - lm);`,
      jsd: `let lm = logMix(lpt, lps);
        let u = ps * (lps - lm) * (1.0 - uniforms.mixW);
        let gk = u - ps * ${stat(STAT.rowSum)};`,
    };
    const hot = v.vec4 ? 'select(T(0.0), T(1.0), vec4<i32>(col, col + 1, col + 2, col + 3) == vec4<i32>(label))' : 'select(0.0, 1.0, col == label)';
    return `
    ${preludeWgsl(v)}
    fn main(index : i32) {
      if (index >= uniforms.size) {
        return;
      }
      let perRow = uniforms.outShape.y / ${n};
      let row = index / perRow;
      let c = index - row * perRow;
      let st = row * ${STAT_COLUMNS};
      let live = ${v.masked ? 'mask[row + uniforms.rowOffset] > 0.0' : 'true'};
      let kdScale = scale[row * ${scales}] * uniforms.invTau;
      var g = T(0.0);
      if (live && kdScale != 0.0 && c < uniforms.sharedCols / ${n}) {
        let lps = (s[index] * uniforms.invTau - ${stat(STAT.maxStudent)}) - ${stat(STAT.logZStudent)};
        let lpt = (t[row * (uniforms.tShape.y / ${n}) + c] * uniforms.invTau - ${stat(STAT.maxTeacher)}) - ${stat(STAT.logZTeacher)};
        let ps = exp(lps);
        ${kd[v.kind]}
        g = gk * kdScale;
      }
      ${
        v.ce === 'none'
          ? ''
          : `let ceScale = scale[row * 2 + 1];
      if (live && ceScale != 0.0) {
        let label = labels[row + uniforms.rowOffset];
        let col = c * ${n};
        g = g + ceScale * (exp((s[index] - ${stat(STAT.maxCe)}) - ${stat(STAT.logZCe)}) - ${hot});
      }`
      }
      setOutputAtIndex(index, g);
    }`;
  }
}
