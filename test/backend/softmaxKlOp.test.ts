/**
 * The softmaxKl op's kernels against its tfjs composition, column by column of the contract (src/ops/softmaxKl.ts):
 * the forward's 'stats' and 'values' layouts and the backward, on each backend present, for each kind, with and
 * without labels (the CE's 'shared' and 'own' modes), a mask read at a row offset, and student and teacher
 * vocabularies of equal and unequal widths (vec4 and not). Where a backend registers no kernels both sides are the
 * composition, and the test then checks the composition itself against the loss code's reference: divergences.ts
 * and crossEntropy.ts per row, and their gradient by tfjs's tape. ≤ 1e-5 relative (5e-5 against the tape, see TAPE_TOLERANCE), no tensors left
 * behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import {
  composedSoftmaxKlBackward,
  composedSoftmaxKlForward,
  hasSoftmaxKlKernels,
  softmaxKlAttrs,
  softmaxKlBackward,
  softmaxKlForward,
  STAT,
  STAT_COLUMNS,
  type SoftmaxKlArgs,
  type SoftmaxKlKind,
} from '../../src/ops/softmaxKl.ts';
import { tokenCrossEntropy } from '../../src/losses/crossEntropy.ts';
import { perPositionDivergence } from '../../src/losses/divergences.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';

const TOLERANCE = 1e-5;
/**
 * The composition's analytic gradient against tfjs's tape of divergences.ts: two float32 routes to one derivative
 * (the tape goes through logMixture and logSoftmax step by step), which differ by up to ~1.3e-5 on wasm for JSD at
 * these V; a wrong term in a formula is off by far more than this bound.
 */
const TAPE_TOLERANCE = 5e-5;
const ROWS = 6;
const ROW_OFFSET = 2;
/** Mask and labels cover ROW_OFFSET rows before the chunk and one after; rows 1 and 4 of the chunk are masked. */
const MASK = [1, 1, 1, 0, 1, 1, 0, 1, 1];
const KINDS: { kind: SoftmaxKlKind; mixWeight: number }[] = [
  { kind: 'forward_kl', mixWeight: 0 },
  { kind: 'reverse_kl', mixWeight: 0 },
  { kind: 'jsd', mixWeight: 0.3 },
  { kind: 'skew_kl', mixWeight: 0.1 },
  { kind: 'skew_kl', mixWeight: 0 },
];
/** [V_s, V_t]: equal and odd (scalar reads); teacher wider; student wider (CE past the shared ids), both vec4. */
const VOCABS = [
  [1003, 1003],
  [1000, 1004],
  [1004, 1000],
];
/** [τ, labels]: with τ = 1 and V_t ≥ V_s the CE shares the KD's log-sum-exp, otherwise it has its own. */
const SETTINGS = [
  [1, true],
  [2, true],
  [2, false],
  [1, false],
] as const;

/** relError, but exact agreement of all-zero columns (rowSum of the forward KL, CE without labels) is 0. */
function columnError(got: Float32Array, want: Float32Array): number {
  if (want.every((x) => x === 0)) return got.every((x) => x === 0) ? 0 : Infinity;
  return relError(got, want);
}

function column(x: Float32Array, width: number, c: number): Float32Array {
  return Float32Array.from({ length: x.length / width }, (_, r) => x[r * width + c]);
}

async function read(tensors: tf.Tensor[]): Promise<Float32Array[]> {
  const out = (await Promise.all(tensors.map((x) => x.data()))) as Float32Array[];
  tf.dispose(tensors);
  return out;
}

/** The loss code's reference for live rows: (D, CE) per row and d(Σ scale·(D, CE))/ds by the tape, dead rows 0. */
function reference(a: SoftmaxKlArgs, scale: tf.Tensor2D): tf.Tensor[] {
  const shared = Math.min(a.student.shape[1], a.teacher.shape[1]);
  const options = { ...DEFAULT_KD_LOSS, kind: a.kind, temperature: a.temperature, jsdBeta: a.mixWeight, skewLambda: a.mixWeight };
  const live = tf.greater(tf.slice(a.mask as tf.Tensor1D, [ROW_OFFSET], [ROWS]), 0);
  const perRow = (s: tf.Tensor2D): tf.Tensor1D[] => {
    const d = perPositionDivergence(tf.slice(a.teacher, [0, 0], [ROWS, shared]), tf.slice(s, [0, 0], [ROWS, shared]), options);
    const terms = [d];
    if (a.labels) terms.push(tokenCrossEntropy(s, tf.slice(a.labels, [ROW_OFFSET], [ROWS])));
    return terms.map((x) => tf.where(live, x, tf.zerosLike(x)));
  };
  const weighted = (s: tf.Tensor): tf.Scalar =>
    tf.addN(perRow(s as tf.Tensor2D).map((x, i) => tf.sum(tf.mul(x, tf.reshape(tf.slice(scale, [0, i], [ROWS, 1]), [ROWS]))))) as tf.Scalar;
  return [tf.stack(perRow(a.student), 1), tf.grad(weighted)(a.student)];
}

test('softmaxKl kernels match the composition, every stat column and the gradient; the composition matches divergences.ts', async (t) => {
  const worst = new Map<string, number>();
  await onEachBackend(async (backend) => {
    const fused = hasSoftmaxKlKernels();
    for (const [p, [vs, vt]] of VOCABS.entries()) {
      for (const [k, { kind, mixWeight }] of KINDS.entries()) {
        const [temperature, withLabels] = SETTINGS[(p + k) % SETTINGS.length];
        const label = `${backend} V_s ${vs} V_t ${vt} ${kind}(${mixWeight}) τ ${temperature}${withLabels ? ' labels' : ''}`;
        const before = tf.memory().numTensors;
        const n = MASK.length;
        const a: SoftmaxKlArgs = {
          student: tf.randomNormal([ROWS, vs], 0, 3, 'float32', 1 + p) as tf.Tensor2D,
          teacher: tf.randomNormal([ROWS, vt], 0, 3, 'float32', 5 + k) as tf.Tensor2D,
          kind,
          temperature,
          mixWeight,
          mask: tf.tensor1d(MASK),
          labels: withLabels ? (tf.randomUniform([n], 0, vs, 'int32', 9) as tf.Tensor1D) : undefined,
          rowOffset: ROW_OFFSET,
        };
        const width = withLabels ? 2 : 1;
        // One live row with a zero scale: the backward must give it exactly 0.
        const scale = tf.tidy(
          () => tf.mul(tf.randomUniform([ROWS, width], 0.5, 1.5, 'float32', 11), tf.tensor2d([1, 1, 0, 1, 1, 1], [ROWS, 1])) as tf.Tensor2D,
        );
        const inputs = { s: a.student, t: a.teacher, mask: a.mask, labels: a.labels };
        const outs = tf.tidy(() => {
          const stats = softmaxKlForward(a, 'stats');
          const composedStats = composedSoftmaxKlForward(inputs, softmaxKlAttrs(a, 'stats'));
          return [
            stats,
            composedStats,
            softmaxKlForward(a, 'values'),
            composedSoftmaxKlForward(inputs, softmaxKlAttrs(a, 'values')),
            softmaxKlBackward(a, stats, scale),
            composedSoftmaxKlBackward(inputs, composedStats, scale, softmaxKlAttrs(a, 'stats')),
            ...(fused ? [] : reference(a, scale)),
          ];
        });
        const [stats, composedStats, values, composedValues, grad, composedGrad, refRows, refGrad] = await read(outs);
        const errors: [string, number][] = [];
        for (const [name, c] of Object.entries(STAT)) {
          errors.push([`stats ${name}`, columnError(column(stats, STAT_COLUMNS, c), column(composedStats, STAT_COLUMNS, c))]);
        }
        errors.push(['values', columnError(values, composedValues)], ['gradient', relError(grad, composedGrad)]);
        if (!fused) {
          for (let c = 0; c < width; c++) {
            errors.push([`composition ${c ? 'CE' : 'D'} vs losses/`, columnError(column(composedValues, width, c), column(refRows, width, c))]);
          }
          errors.push(['composition gradient vs the tape', relError(composedGrad, refGrad)]);
        }
        for (const [what, e] of errors) {
          const bound = what.endsWith('the tape') ? TAPE_TOLERANCE : TOLERANCE;
          assert.ok(e <= bound, `${label}: ${what}: relative error ${e}`);
          worst.set(backend, Math.max(worst.get(backend) ?? 0, e));
        }
        // Masked rows (chunk rows 1 and 4) and the zero-scale row 2: exact zeros in every output.
        for (const r of [1, 4]) {
          assert.ok(
            stats.subarray(r * STAT_COLUMNS, (r + 1) * STAT_COLUMNS).every((x) => x === 0),
            `${label}: masked row ${r} has stats`,
          );
        }
        for (const r of [1, 2, 4])
          assert.ok(
            grad.subarray(r * vs, (r + 1) * vs).every((x) => x === 0),
            `${label}: row ${r} has a gradient`,
          );
        assert.equal(values.length, ROWS * width);
        tf.dispose([a.student, a.teacher, a.mask as tf.Tensor, ...(a.labels ? [a.labels] : []), scale]);
        assert.equal(tf.memory().numTensors, before, `${label}: tensors left behind`);
      }
    }
  });
  for (const [b, e] of worst) t.diagnostic(`${b}: worst relative error ${e.toExponential(2)}`);
});

test('softmaxKl attrs: skew KL at λ = 0 runs as the forward KL; the CE mode follows τ and the vocabularies', () => {
  const s = tf.zeros([2, 8]) as tf.Tensor2D;
  const wide = tf.zeros([2, 10]) as tf.Tensor2D;
  const labels = tf.zeros([2], 'int32') as tf.Tensor1D;
  const base = { student: s, teacher: wide, temperature: 1, mixWeight: 0 };
  assert.deepEqual(softmaxKlAttrs({ ...base, kind: 'skew_kl' }, 'stats'), {
    kind: 'forward_kl',
    ce: 'none',
    invTau: 1,
    mixW: 0,
    rowOffset: 0,
    layout: 'stats',
  });
  assert.equal(softmaxKlAttrs({ ...base, kind: 'jsd', mixWeight: 0.5, labels }, 'values').ce, 'shared');
  assert.equal(softmaxKlAttrs({ ...base, kind: 'jsd', mixWeight: 0.5, labels, temperature: 2 }, 'values').ce, 'own');
  assert.equal(softmaxKlAttrs({ ...base, kind: 'forward_kl', labels, student: wide, teacher: s }, 'values').ce, 'own');
  const short = tf.zeros([1], 'int32') as tf.Tensor1D;
  assert.throws(() => softmaxKlForward({ ...base, kind: 'forward_kl', labels: short }, 'values'), /labels \[1\] must be 1-D and reach row 2/);
  tf.dispose([s, wide, labels, short]);
});
