/**
 * The fused, chunked softmax + divergence of issue #10: per row of student logits s [rows, V_s] and teacher logits
 * t [rows, V_t], the divergence between softmax(t/τ) and softmax(s/τ) over the shared ids [0, min(V_s, V_t)), and
 * its gradient w.r.t. s, each in one webgpu kernel instead of the composition's 21 (forward KL) to 38 (JSD) ops per
 * chunk forward and 23 to 37 backward (each ~75 µs of host time through Dawn, most a pass over a [rows, V] tensor).
 * The next-token CE on labels rides along in the same passes (it needs one more log-sum-exp at most), in place of
 * its own 26 ops forward and 14 backward.
 *
 * On every other backend the composition in src/losses/divergences.ts stays as it is (the fixture tests compare it
 * against PyTorch); fusedKdDivergence below falls back to it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { perPositionDivergence } from '../../losses/divergences.ts';
import { validateKdOptions } from '../../losses/mixing.ts';
import type { KdLossOptions } from '../../losses/types.ts';
import { onWebgpu, registerWebgpuKernel, runKernel, runProgram } from './program.ts';
import { SoftmaxKlBackwardProgram } from './softmaxKlBackward.ts';
import { SoftmaxKlForwardProgram, type ForwardLayout } from './softmaxKlForward.ts';
import { STAT, uniformData, type CeMode, type SoftmaxKlVariant } from './softmaxKlWgsl.ts';

export { STAT, STAT_COLUMNS } from './softmaxKlWgsl.ts';

const FORWARD = 'DistillSoftmaxKlForward';
const BACKWARD = 'DistillSoftmaxKlBackward';

export interface SoftmaxKlArgs {
  /** [rows, V_s]: raw student logits (not divided by τ). */
  student: tf.Tensor2D;
  /** [rows, V_t]: raw teacher logits; never differentiated. */
  teacher: tf.Tensor2D;
  options: KdLossOptions;
  /** [N] float32, N ≥ rowOffset + rows: rows with mask ≤ 0 give 0 loss and 0 gradient, and are not read. */
  mask?: tf.Tensor1D;
  /** [N] int32 next-token labels: adds the CE at τ = 1 over the student's whole vocabulary. */
  labels?: tf.Tensor1D;
  /** Where these rows start in mask and labels, which are passed whole so that no chunk slices them. */
  rowOffset?: number;
}

interface Attrs {
  kind: KdLossOptions['kind'];
  ce: CeMode;
  invTau: number;
  mixW: number;
  rowOffset: number;
  layout: ForwardLayout;
}

function variantOf(inputs: tf.NamedTensorInfoMap, a: Attrs): SoftmaxKlVariant {
  const s = inputs.s as tf.TensorInfo;
  const t = inputs.t as tf.TensorInfo;
  // Both row strides multiples of 4 make the shared width one too, and every row start 16-byte aligned.
  return { kind: a.kind, vec4: s.shape[1] % 4 === 0 && t.shape[1] % 4 === 0, masked: inputs.mask !== undefined, ce: a.ce };
}

function uniformsOf(inputs: tf.NamedTensorInfoMap, a: Attrs): ReturnType<typeof uniformData> {
  const s = inputs.s as tf.TensorInfo;
  const t = inputs.t as tf.TensorInfo;
  return uniformData({ invTau: a.invTau, sharedCols: Math.min(s.shape[1], t.shape[1]), rowOffset: a.rowOffset, mixW: a.mixW });
}

/** The inputs in the programs' variableNames order: s, t, [stats, scale,] [mask,] [labels]. */
function ordered(inputs: tf.NamedTensorInfoMap, names: string[]): tf.TensorInfo[] {
  return names.map((n) => inputs[n] as tf.TensorInfo);
}

const forwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const a = attrs as unknown as Attrs;
  const v = variantOf(inputs, a);
  const program = new SoftmaxKlForwardProgram((inputs.s as tf.TensorInfo).shape[0], v, a.layout);
  return runProgram(backend as tf.KernelBackend, program, ordered(inputs, program.variableNames), uniformsOf(inputs, a));
};

const backwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const a = attrs as unknown as Attrs;
  const v = variantOf(inputs, a);
  const [rows, vocab] = (inputs.s as tf.TensorInfo).shape;
  const program = new SoftmaxKlBackwardProgram(rows, vocab, v);
  return runProgram(backend as tf.KernelBackend, program, ordered(inputs, program.variableNames), uniformsOf(inputs, a));
};

function ensureRegistered(): void {
  registerWebgpuKernel(FORWARD, forwardKernel);
  registerWebgpuKernel(BACKWARD, backwardKernel);
}

/**
 * The kernel's own view of the options: skew KL at λ = 0 is the forward KL exactly (m = p_s), and runs as it
 * rather than with log λ = −inf in the shader.
 */
function attrsOf(a: SoftmaxKlArgs, layout: ForwardLayout): Attrs {
  const o = a.options;
  const kind = o.kind === 'skew_kl' && o.skewLambda === 0 ? 'forward_kl' : o.kind;
  const mixW = kind === 'jsd' ? o.jsdBeta : kind === 'skew_kl' ? o.skewLambda : 0;
  let ce: CeMode = 'none';
  if (a.labels) ce = o.temperature === 1 && a.teacher.shape[1] >= a.student.shape[1] ? 'shared' : 'own';
  return { kind, ce, invTau: 1 / o.temperature, mixW, rowOffset: a.rowOffset ?? 0, layout };
}

function check(a: SoftmaxKlArgs): void {
  if (!onWebgpu()) throw new Error('softmaxKl: the fused KD kernels run on the webgpu backend only');
  const rows = a.student.shape[0];
  if (a.teacher.shape[0] !== rows) throw new Error(`softmaxKl: student ${a.student.shape} and teacher ${a.teacher.shape} rows differ`);
  const end = (a.rowOffset ?? 0) + rows;
  for (const [name, x] of [['mask', a.mask], ['labels', a.labels]] as const) {
    if (x && x.shape[0] < end) throw new Error(`softmaxKl: ${name} [${x.shape}] is shorter than row ${end}`);
  }
  if (a.labels && a.labels.dtype !== 'int32') throw new Error(`softmaxKl: labels must be int32, got ${a.labels.dtype}`);
}

function kernelInputs(a: SoftmaxKlArgs): tf.NamedTensorMap {
  const inputs: tf.NamedTensorMap = { s: a.student, t: a.teacher };
  if (a.mask) inputs.mask = a.mask;
  if (a.labels) inputs.labels = a.labels;
  return inputs;
}

/**
 * One pass over the rows: [rows, 1] the divergence (or [rows, 2]: divergence, CE, with labels) in the `values`
 * layout; [rows, STAT_COLUMNS] in the `stats` layout, what softmaxKlGradient needs.
 */
export function softmaxKlForward(a: SoftmaxKlArgs, layout: ForwardLayout): tf.Tensor2D {
  check(a);
  ensureRegistered();
  return runKernel<tf.Tensor2D>(FORWARD, kernelInputs(a), attrsOf(a, layout) as unknown as tf.NamedAttrMap);
}

/**
 * d(Σ_rows scale_r·D_r [+ scaleCe_r·CE_r]) / d student, [rows, V_s], from the forward's `stats` [rows, STAT_COLUMNS]
 * and `scale` [rows, 1] (or [rows, 2] with labels: the KD and the CE scales).
 */
export function softmaxKlGradient(a: SoftmaxKlArgs, stats: tf.Tensor2D, scale: tf.Tensor2D): tf.Tensor2D {
  check(a);
  const rows = a.student.shape[0];
  const width = a.labels ? 2 : 1;
  if (scale.shape[0] !== rows || scale.shape[1] !== width) {
    throw new Error(`softmaxKl: scale ${scale.shape} must be [${rows}, ${width}]`);
  }
  ensureRegistered();
  const inputs = { ...kernelInputs(a), stats, scale };
  return runKernel<tf.Tensor2D>(BACKWARD, inputs, attrsOf(a, 'stats') as unknown as tf.NamedAttrMap);
}

/**
 * The per-row divergence [rows] between softmax(teacher/τ) and softmax(student/τ) (not τ²-scaled), 0 where
 * mask ≤ 0, differentiable w.r.t. the student logits only. On webgpu: one fused kernel forward, whose per-row
 * statistics are saved for one fused kernel backward. Elsewhere: divergences.ts' composition, by autodiff.
 */
export function fusedKdDivergence(student: tf.Tensor2D, teacher: tf.Tensor2D, mask: tf.Tensor1D, options: KdLossOptions): tf.Tensor1D {
  validateKdOptions(options);
  const rows = student.shape[0];
  if (!onWebgpu()) {
    return tf.tidy(() => {
      const shared = Math.min(student.shape[1], teacher.shape[1]);
      const cut = (x: tf.Tensor2D): tf.Tensor2D => (x.shape[1] > shared ? tf.slice(x, [0, 0], [rows, shared]) : x);
      const d = perPositionDivergence(cut(teacher), cut(student), options);
      return tf.where(tf.greater(mask, 0), d, tf.zerosLike(d));
    });
  }
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [s, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const stats = softmaxKlForward({ student: s, teacher, mask, options }, 'stats');
    // The teacher and mask may be gone by the backward (made inside the caller's closure): saved with s and the stats.
    save([s, teacher, mask, stats]);
    const value = tf.reshape(tf.slice(stats, [0, STAT.value], [rows, 1]), [rows]) as tf.Tensor1D;
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [sB, tB, mB, statsB] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D];
      const scale = tf.reshape(dy, [rows, 1]) as tf.Tensor2D;
      return [softmaxKlGradient({ student: sB, teacher: tB, mask: mB, options }, statsB, scale)];
    };
    return { value, gradFunc };
  });
  return op(student) as tf.Tensor1D;
}
