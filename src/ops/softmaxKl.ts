/**
 * The fused softmax + KD divergence (+ next-token CE) of the chunked loss, as an op: per row of raw student logits
 * s [rows, V_s] and raw teacher logits t [rows, V_t], the divergence between softmax(t/τ) and softmax(s/τ) over
 * the shared ids [0, W), W = min(V_s, V_t), and its gradient w.r.t. s, in one kernel each where the current backend
 * registers them (never forming p_s, p_t or their logs as [rows, V] tensors), a tfjs composition elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend; every tensor float32 unless said):
 *
 * 'SoftmaxKlForward'
 *   inputs  s       [rows, V_s]  raw student logits (not divided by τ)
 *           t       [rows, V_t]  raw teacher logits
 *           mask?   [N] float32, N ≥ rowOffset + rows: row r is live when mask[rowOffset + r] > 0; a dead row writes
 *                   zeros in every column and its logits are not read (they may be NaN or ±inf). Absent: all live.
 *           labels? int32 [N]: next-token label of row r at labels[rowOffset + r]. Present exactly when attrs.ce ≠
 *                   'none'. mask and labels are passed whole, so that no chunk of rows slices them.
 *   attrs   kind      'forward_kl' | 'reverse_kl' | 'jsd' | 'skew_kl'. JSD and skew KL always have 0 < mixW < 1
 *                     (the op refuses others; skew KL at λ = 0 is sent as forward_kl, which it equals exactly).
 *           ce        'none' | 'shared' | 'own': whether and how the CE's log-sum-exp is had. 'shared': τ = 1 and
 *                     W = V_s, so it is the student's KD one (maxCe = maxStudent, logZCe = logZStudent); 'own':
 *                     over the raw student row, all V_s ids.
 *           invTau    1/τ. a = s·invTau, b = t·invTau (the product rounded to float32, as tf.mul does it).
 *           mixW      w: β of JSD, λ of skew KL; 0 and unused for forward and reverse KL. A kernel takes the
 *                     weight as w' = w when 0 < w < 1, else 0.5 (so both logs stay finite), with log w' and
 *                     log(1 − w') taken in double precision and rounded to float32 (Math.log on the host).
 *           rowOffset where row 0 of s and t sits in mask and labels.
 *           layout    'values' | 'stats': which output.
 *   output  'values': [rows, 1] = D, or [rows, 2] = (D, CE) when ce ≠ 'none'.
 *           'stats':  [rows, STAT_COLUMNS = 9], the columns of STAT:
 *             0 value        D, the divergence at τ (not τ²-scaled)
 *             1 ce           CE = (maxCe − s[label]) + logZCe, label clamped to [0, V_s − 1]; 0 when ce = 'none'
 *             2 maxStudent   m_s = max_{j<W} a_j        3 logZStudent  L_s = log Σ_{j<W} exp(a_j − m_s)
 *             4 maxTeacher   m_t = max_{j<W} b_j        5 logZTeacher  L_t = log Σ_{j<W} exp(b_j − m_t)
 *             6 rowSum       what the kind's gradient needs: reverse KL: D; JSD: Σu; skew KL: Σv; forward KL: 0
 *             7 maxCe        8 logZCe: max and log Σ exp(x − max) of the CE's row (see ce); 0 when ce = 'none'
 *           The max and log z are kept apart rather than as one log-sum-exp m + L: at logits of ±80 that sum is
 *           ~83 and rounding it costs 4e-6 absolute in every log-probability.
 *   With lps = (a − m_s) − L_s, lpt = (b − m_t) − L_t (logs of p_s, p_t over [0, W)) and
 *   lm = log(w'·p_t + (1 − w')·p_s) computed as max(x, y) + log(exp(x − max) + exp(y − max)) with
 *   x = lpt + log w', y = lps + log(1 − w'):
 *     forward KL  D = Σ p_t·(lpt − lps)        reverse KL  D = Σ p_s·(lps − lpt)
 *     JSD(β)      D = Σ β·p_t·(lpt − lm) + u,  u = (1 − β)·p_s·(lps − lm)
 *     skew KL(λ)  D = Σ p_t·(lpt − lm),        v = (1 − λ)·p_t·p_s / m = exp(lpt + lps + log(1 − λ) − lm)
 *   (the webgpu kernel forms the two KLs from differences t − s of the raw logits, which lose nothing at ±80).
 *
 * 'SoftmaxKlBackward'
 *   inputs  s, t, mask?, labels? as above; stats [rows, 9] the forward's 'stats' output for the same s, t, attrs;
 *           scale [rows, 1] (or [rows, 2] when ce ≠ 'none'): the upstream gradient of each row's D (and CE).
 *   attrs   the forward's (layout is 'stats' and unused).
 *   output  dS [rows, V_s] = d(Σ_r scale[r, 0]·D_r + scale[r, 1]·CE_r) / ds. Per element j of a live row:
 *             g = 0;  if scale[r, 0] ≠ 0 and j < W:  g = gk · scale[r, 0] · invTau, with
 *               forward KL  gk = p_s − p_t                 reverse KL  gk = p_s·((lps − lpt) − rowSum)
 *               skew KL     gk = p_s·rowSum − v            JSD         gk = u − p_s·rowSum
 *             if ce ≠ 'none' and scale[r, 1] ≠ 0:  g += scale[r, 1]·(exp((s_j − maxCe) − logZCe) − [j = label])
 *               (label unclamped here: an out-of-range label has no one-hot entry)
 *           Ids j ≥ W get the CE part only. Dead rows are exactly 0, as are rows whose scales are 0, whatever
 *           their logits hold.
 */
import * as tf from '@tensorflow/tfjs-core';
import { OpInputError } from './inputChecks.ts';
import { hasKernel, runKernel } from './kernels.ts';

export const SOFTMAX_KL_FORWARD_KERNEL = 'SoftmaxKlForward';
export const SOFTMAX_KL_BACKWARD_KERNEL = 'SoftmaxKlBackward';

export type SoftmaxKlKind = 'forward_kl' | 'reverse_kl' | 'jsd' | 'skew_kl';
export type SoftmaxKlCe = 'none' | 'shared' | 'own';
export type SoftmaxKlLayout = 'values' | 'stats';

/** The columns of the forward's 'stats' layout. */
export const STAT = {
  value: 0,
  ce: 1,
  maxStudent: 2,
  logZStudent: 3,
  maxTeacher: 4,
  logZTeacher: 5,
  rowSum: 6,
  maxCe: 7,
  logZCe: 8,
} as const;
export const STAT_COLUMNS = 9;

export interface SoftmaxKlAttrs {
  kind: SoftmaxKlKind;
  ce: SoftmaxKlCe;
  invTau: number;
  mixW: number;
  rowOffset: number;
  layout: SoftmaxKlLayout;
}

export interface SoftmaxKlArgs {
  /** [rows, V_s]: raw student logits (not divided by τ). */
  student: tf.Tensor2D;
  /** [rows, V_t]: raw teacher logits; never differentiated. */
  teacher: tf.Tensor2D;
  kind: SoftmaxKlKind;
  /** τ, dividing both sides' logits. */
  temperature: number;
  /** β of JSD, λ of skew KL; ignored by the two KLs. */
  mixWeight: number;
  /** [N] float32, N ≥ rowOffset + rows: rows with mask ≤ 0 give 0 loss and 0 gradient, and are not read. */
  mask?: tf.Tensor1D;
  /** [N] int32 next-token labels: adds the CE at τ = 1 over the student's whole vocabulary. */
  labels?: tf.Tensor1D;
  /** Where these rows start in mask and labels, which are passed whole so that no chunk slices them. */
  rowOffset?: number;
}

/** True when the current backend registers both softmaxKl kernels: the chunked loss then takes the fused term. */
export function hasSoftmaxKlKernels(): boolean {
  return hasKernel(SOFTMAX_KL_FORWARD_KERNEL, SOFTMAX_KL_BACKWARD_KERNEL);
}

/** The kernels' attrs for `a`: skew KL at λ = 0 is the forward KL exactly, and runs as it (log λ would be −inf). */
export function softmaxKlAttrs(a: SoftmaxKlArgs, layout: SoftmaxKlLayout): SoftmaxKlAttrs {
  const kind = a.kind === 'skew_kl' && a.mixWeight === 0 ? 'forward_kl' : a.kind;
  const mixW = kind === 'jsd' || kind === 'skew_kl' ? a.mixWeight : 0;
  let ce: SoftmaxKlCe = 'none';
  if (a.labels) ce = a.temperature === 1 && a.teacher.shape[1] >= a.student.shape[1] ? 'shared' : 'own';
  return { kind, ce, invTau: 1 / a.temperature, mixW, rowOffset: a.rowOffset ?? 0, layout };
}

function check(a: SoftmaxKlArgs): void {
  const rows = a.student.shape[0];
  if (a.student.rank !== 2 || a.teacher.rank !== 2 || a.teacher.shape[0] !== rows) {
    throw new OpInputError(`softmaxKl: student [${a.student.shape}] and teacher [${a.teacher.shape}] must be [rows, V] with the same rows`);
  }
  const end = (a.rowOffset ?? 0) + rows;
  for (const [name, x] of [
    ['mask', a.mask],
    ['labels', a.labels],
  ] as const) {
    if (x && (x.rank !== 1 || x.shape[0] < end)) throw new OpInputError(`softmaxKl: ${name} [${x.shape}] must be 1-D and reach row ${end}`);
  }
  if (a.labels && a.labels.dtype !== 'int32') throw new OpInputError(`softmaxKl: labels must be int32, got ${a.labels.dtype}`);
  const mixed = a.kind === 'jsd' || (a.kind === 'skew_kl' && a.mixWeight !== 0);
  if (mixed && !(a.mixWeight > 0 && a.mixWeight < 1)) {
    throw new OpInputError(`softmaxKl: ${a.kind} mixture weight ${a.mixWeight} must be in (0, 1) (skew KL also takes 0, the forward KL)`);
  }
  if (a.student.dtype !== 'float32' || a.teacher.dtype !== 'float32') {
    throw new OpInputError(`softmaxKl: logits must be float32, got student ${a.student.dtype}, teacher ${a.teacher.dtype}`);
  }
}

function kernelInputs(a: SoftmaxKlArgs): tf.NamedTensorMap {
  const inputs: tf.NamedTensorMap = { s: a.student, t: a.teacher };
  if (a.mask) inputs.mask = a.mask;
  if (a.labels) inputs.labels = a.labels;
  return inputs;
}

/** The kernels' inputs by name, as the compositions read them. */
export interface SoftmaxKlTensors {
  s: tf.Tensor2D;
  t: tf.Tensor2D;
  mask?: tf.Tensor1D;
  labels?: tf.Tensor1D;
}

/** What both compositions derive per row: the log-probabilities over [0, W), the liveness, and the mixture. */
interface RowTerms {
  rows: number;
  shared: number;
  lps: tf.Tensor2D;
  lpt: tf.Tensor2D;
  maxS: tf.Tensor2D;
  logZS: tf.Tensor2D;
  maxT: tf.Tensor2D;
  logZT: tf.Tensor2D;
  /** [rows, 1] bool; null when every row is live. */
  live: tf.Tensor2D | null;
}

function sharedLogits(x: tf.Tensor2D, shared: number): tf.Tensor2D {
  return x.shape[1] > shared ? tf.slice(x, [0, 0], [x.shape[0], shared]) : x;
}

/** max and log Σ exp(x − max) per row, [rows, 1] each. */
function maxAndLogZ(x: tf.Tensor2D): [tf.Tensor2D, tf.Tensor2D] {
  const max = tf.max(x, 1, true) as tf.Tensor2D;
  return [max, tf.log(tf.sum(tf.exp(tf.sub(x, max)), 1, true)) as tf.Tensor2D];
}

/** The mixture weight as a kernel takes it (see the contract): w' and its two logs, rounded to float32 by the ops. */
export function mixture(w: number): { w: number; logW: number; log1mW: number } {
  const wPrime = w > 0 && w < 1 ? w : 0.5;
  return { w: wPrime, logW: Math.log(wPrime), log1mW: Math.log(1 - wPrime) };
}

function logMix(lpt: tf.Tensor2D, lps: tf.Tensor2D, w: number): tf.Tensor2D {
  const { logW, log1mW } = mixture(w);
  const x = tf.add(lpt, logW);
  const y = tf.add(lps, log1mW);
  const m = tf.maximum(x, y);
  return tf.add(m, tf.log(tf.add(tf.exp(tf.sub(x, m)), tf.exp(tf.sub(y, m))))) as tf.Tensor2D;
}

function rowTerms(inputs: SoftmaxKlTensors, attrs: SoftmaxKlAttrs): RowTerms {
  const rows = inputs.s.shape[0];
  const shared = Math.min(inputs.s.shape[1], inputs.t.shape[1]);
  const a = tf.mul(sharedLogits(inputs.s, shared), attrs.invTau) as tf.Tensor2D;
  const b = tf.mul(sharedLogits(inputs.t, shared), attrs.invTau) as tf.Tensor2D;
  const [maxS, logZS] = maxAndLogZ(a);
  const [maxT, logZT] = maxAndLogZ(b);
  const lps = tf.sub(tf.sub(a, maxS), logZS) as tf.Tensor2D;
  const lpt = tf.sub(tf.sub(b, maxT), logZT) as tf.Tensor2D;
  const live = inputs.mask ? (tf.reshape(tf.greater(tf.slice(inputs.mask, [attrs.rowOffset], [rows]), 0), [rows, 1]) as tf.Tensor2D) : null;
  return { rows, shared, lps, lpt, maxS, logZS, maxT, logZT, live };
}

/** `x` where the row is live, else 0 (tf.where: a dead row's NaN never reaches the result). */
function onLiveRows(x: tf.Tensor2D, live: tf.Tensor2D | null): tf.Tensor2D {
  if (!live) return x;
  return tf.where(tf.broadcastTo(live, x.shape), x, tf.zerosLike(x)) as tf.Tensor2D;
}

function labelsOf(inputs: SoftmaxKlTensors, attrs: SoftmaxKlAttrs, rows: number): tf.Tensor1D {
  if (!inputs.labels) throw new OpInputError(`softmaxKl: ce '${attrs.ce}' needs the labels input`);
  return tf.slice(inputs.labels, [attrs.rowOffset], [rows]);
}

/**
 * The forward as tfjs ops, in the contract's 'values' or 'stats' layout: the reference the kernels are tested
 * against, and the op where none is registered.
 */
export function composedSoftmaxKlForward(inputs: SoftmaxKlTensors, attrs: SoftmaxKlAttrs): tf.Tensor2D {
  return tf.tidy(() => {
    const r = rowTerms(inputs, attrs);
    const { lps, lpt } = r;
    const sum = (x: tf.Tensor): tf.Tensor2D => tf.sum(x, 1, true) as tf.Tensor2D;
    let value: tf.Tensor2D;
    let rowSum: tf.Tensor2D;
    if (attrs.kind === 'forward_kl' || attrs.kind === 'reverse_kl') {
      const [p, q] = attrs.kind === 'forward_kl' ? [lpt, lps] : [lps, lpt];
      value = sum(tf.mul(tf.exp(p), tf.sub(p, q)));
      rowSum = attrs.kind === 'reverse_kl' ? value : tf.zerosLike(value);
    } else {
      const w = mixture(attrs.mixW);
      const lm = logMix(lpt, lps, attrs.mixW);
      if (attrs.kind === 'jsd') {
        const u = tf.mul(tf.mul(tf.exp(lps), tf.sub(lps, lm)), 1 - w.w);
        value = sum(tf.add(tf.mul(tf.mul(tf.exp(lpt), tf.sub(lpt, lm)), w.w), u));
        rowSum = sum(u);
      } else {
        value = sum(tf.mul(tf.exp(lpt), tf.sub(lpt, lm)));
        rowSum = sum(tf.exp(tf.sub(tf.add(tf.add(lpt, lps), w.log1mW), lm)));
      }
    }
    let ce = tf.zerosLike(value);
    let maxCe = tf.zerosLike(value);
    let logZCe = tf.zerosLike(value);
    if (attrs.ce !== 'none') {
      const vs = inputs.s.shape[1];
      [maxCe, logZCe] = attrs.ce === 'shared' ? [r.maxS, r.logZS] : maxAndLogZ(inputs.s);
      const label = tf.cast(tf.clipByValue(labelsOf(inputs, attrs, r.rows), 0, vs - 1), 'int32');
      const at = tf.add(tf.mul(tf.range(0, r.rows, 1, 'int32'), tf.scalar(vs, 'int32')), label);
      const picked = tf.reshape(tf.gather(tf.reshape(inputs.s, [-1]), at), [r.rows, 1]);
      ce = tf.add(tf.sub(maxCe, picked), logZCe) as tf.Tensor2D;
    }
    const columns =
      attrs.layout === 'stats' ? [value, ce, r.maxS, r.logZS, r.maxT, r.logZT, rowSum, maxCe, logZCe] : attrs.ce === 'none' ? [value] : [value, ce];
    return onLiveRows(tf.concat(columns, 1) as tf.Tensor2D, r.live);
  });
}

/** The backward as tfjs ops, from the forward's stats: the reference the kernels are tested against. */
export function composedSoftmaxKlBackward(inputs: SoftmaxKlTensors, stats: tf.Tensor2D, scale: tf.Tensor2D, attrs: SoftmaxKlAttrs): tf.Tensor2D {
  return tf.tidy(() => {
    const rows = inputs.s.shape[0];
    const vs = inputs.s.shape[1];
    const shared = Math.min(vs, inputs.t.shape[1]);
    const column = (c: number): tf.Tensor2D => tf.slice(stats, [0, c], [rows, 1]);
    const a = tf.mul(sharedLogits(inputs.s, shared), attrs.invTau);
    const b = tf.mul(sharedLogits(inputs.t, shared), attrs.invTau);
    const lps = tf.sub(tf.sub(a, column(STAT.maxStudent)), column(STAT.logZStudent)) as tf.Tensor2D;
    const lpt = tf.sub(tf.sub(b, column(STAT.maxTeacher)), column(STAT.logZTeacher)) as tf.Tensor2D;
    const ps = tf.exp(lps);
    const rowSum = column(STAT.rowSum);
    let gk: tf.Tensor;
    if (attrs.kind === 'forward_kl') gk = tf.sub(ps, tf.exp(lpt));
    else if (attrs.kind === 'reverse_kl') gk = tf.mul(ps, tf.sub(tf.sub(lps, lpt), rowSum));
    else {
      const w = mixture(attrs.mixW);
      const lm = logMix(lpt, lps, attrs.mixW);
      if (attrs.kind === 'skew_kl') gk = tf.sub(tf.mul(ps, rowSum), tf.exp(tf.sub(tf.add(tf.add(lpt, lps), w.log1mW), lm)));
      else {
        const u = tf.mul(tf.mul(ps, tf.sub(lps, lm)), 1 - w.w);
        gk = tf.sub(u, tf.mul(ps, rowSum));
      }
    }
    const kdScale = tf.mul(tf.slice(scale, [0, 0], [rows, 1]), attrs.invTau);
    const zero = tf.zeros([rows, shared]);
    // Rows whose scale is 0 get exactly 0, whatever their logits hold (0 · NaN would be NaN).
    let g: tf.Tensor2D = tf.where(tf.broadcastTo(tf.notEqual(kdScale, 0), [rows, shared]), tf.mul(gk, kdScale), zero) as tf.Tensor2D;
    if (vs > shared)
      g = tf.pad(g, [
        [0, 0],
        [0, vs - shared],
      ]);
    if (attrs.ce !== 'none') {
      const ceScale = tf.slice(scale, [0, 1], [rows, 1]);
      // Compared with the ids rather than tf.oneHot, whose float32 output is all zeros on wasm (tfjs 4.22).
      const ids = tf.range(0, vs, 1, 'int32').reshape([1, vs]);
      const hot = tf.cast(tf.equal(ids, tf.reshape(labelsOf(inputs, attrs, rows), [rows, 1])), 'float32');
      const softmax = tf.exp(tf.sub(tf.sub(inputs.s, column(STAT.maxCe)), column(STAT.logZCe)));
      const ceGrad = tf.mul(tf.sub(softmax, hot), ceScale);
      g = tf.add(g, tf.where(tf.broadcastTo(tf.notEqual(ceScale, 0), [rows, vs]), ceGrad, tf.zerosLike(ceGrad))) as tf.Tensor2D;
    }
    const live = inputs.mask ? (tf.reshape(tf.greater(tf.slice(inputs.mask, [attrs.rowOffset], [rows]), 0), [rows, 1]) as tf.Tensor2D) : null;
    return onLiveRows(g, live);
  });
}

/**
 * One pass over the rows: [rows, 1] the divergence (or [rows, 2]: divergence, CE, with labels) in the 'values'
 * layout; [rows, STAT_COLUMNS] in the 'stats' layout, what softmaxKlBackward needs. Not differentiable itself:
 * a loss pairs it with softmaxKlBackward in its own custom gradient.
 */
export function softmaxKlForward(a: SoftmaxKlArgs, layout: SoftmaxKlLayout): tf.Tensor2D {
  check(a);
  const attrs = softmaxKlAttrs(a, layout);
  if (!hasKernel(SOFTMAX_KL_FORWARD_KERNEL)) return composedSoftmaxKlForward({ s: a.student, t: a.teacher, mask: a.mask, labels: a.labels }, attrs);
  return runKernel<tf.Tensor2D>(SOFTMAX_KL_FORWARD_KERNEL, kernelInputs(a), attrs);
}

/**
 * d(Σ_rows scale_r·D_r [+ scaleCe_r·CE_r]) / d student, [rows, V_s], from the forward's `stats` [rows, STAT_COLUMNS]
 * and `scale` [rows, 1] (or [rows, 2] with labels: the KD and the CE scales).
 */
export function softmaxKlBackward(a: SoftmaxKlArgs, stats: tf.Tensor2D, scale: tf.Tensor2D): tf.Tensor2D {
  check(a);
  const rows = a.student.shape[0];
  const width = a.labels ? 2 : 1;
  if (scale.rank !== 2 || scale.shape[0] !== rows || scale.shape[1] !== width) {
    throw new OpInputError(`softmaxKlBackward: scale [${scale.shape}] must be [${rows}, ${width}] (one column per term: KD${a.labels ? ', CE' : ''})`);
  }
  if (stats.rank !== 2 || stats.shape[0] !== rows || stats.shape[1] !== STAT_COLUMNS) {
    throw new OpInputError(`softmaxKlBackward: stats [${stats.shape}] must be [${rows}, ${STAT_COLUMNS}], softmaxKlForward's 'stats' layout`);
  }
  const attrs = softmaxKlAttrs(a, 'stats');
  if (!hasKernel(SOFTMAX_KL_BACKWARD_KERNEL)) {
    return composedSoftmaxKlBackward({ s: a.student, t: a.teacher, mask: a.mask, labels: a.labels }, stats, scale, attrs);
  }
  return runKernel<tf.Tensor2D>(SOFTMAX_KL_BACKWARD_KERNEL, { ...kernelInputs(a), stats, scale }, attrs);
}
