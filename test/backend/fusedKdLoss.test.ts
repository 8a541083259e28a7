/**
 * The fused softmax + divergence (the softmaxKl op, src/ops/softmaxKl.ts, as fusedKdDivergence uses it) against the plain tfjs composition
 * (divergences.ts differentiated by tfjs's tape), on each backend present: the per-row divergence and its gradient
 * w.r.t. the student logits, and through a head matmul to the hidden states and the head; then the chunked loss
 * on hidden states (kdLossFromHidden: the fused term on webgpu, with the CE folded in) against the unchunked
 * composition (webgpu only). Random logits with V not a multiple of 4 (nor of 256) and V = 4096 (the vec4 path),
 * logits of ±80, τ = 1 and 2, masked rows; ≤ 1e-5 relative, no tensors left behind. On cpu and wasm the fused op
 * is the composition, so there the check is of the harness; the webgpu run is the real one (its worst errors are
 * printed as diagnostics).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { onEachBackend } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import { fusedKdDivergence } from '../../src/losses/fusedKdTerm.ts';
import { kdLossFromHidden } from '../../src/losses/chunkedKd.ts';
import { hasSoftmaxKlKernels } from '../../src/ops/softmaxKl.ts';
import { tokenCrossEntropy } from '../../src/losses/crossEntropy.ts';
import { perPositionDivergence } from '../../src/losses/divergences.ts';
import { maskedMean } from '../../src/losses/maskedMean.ts';
import { mixLosses } from '../../src/losses/mixing.ts';
import { DEFAULT_KD_LOSS, KD_LOSS_KINDS, type KdLossOptions } from '../../src/losses/types.ts';

const TOLERANCE = 1e-5;
const ROWS = 6;
/** Rows 1 and 4 are masked out. */
const MASK = [1, 0, 1, 1, 0, 1];

type Worst = Map<string, number>;

function note(worst: Worst, backend: string, e: number): void {
  worst.set(backend, Math.max(worst.get(backend) ?? 0, e));
}

function report(t: { diagnostic: (m: string) => void }, worst: Worst): void {
  for (const [b, e] of worst) t.diagnostic(`${b}: worst relative error ${e.toExponential(2)}`);
}

/** Reads every tensor asynchronously (webgpu in Node has no dataSync) and disposes them. */
async function read(tensors: tf.Tensor[]): Promise<Float32Array[]> {
  const out = (await Promise.all(tensors.map((x) => x.data()))) as Float32Array[];
  tf.dispose(tensors);
  return out;
}

/** Runs `body` and checks that it leaves no tensors behind. */
async function noLeaks(label: string, body: () => Promise<void>): Promise<void> {
  const before = tf.memory().numTensors;
  await body();
  assert.equal(tf.memory().numTensors, before, `${label}: tensors left behind`);
}

/** The composition: divergences.ts per row, 0 where masked (tf.where, so a masked row contributes nothing). */
function composedDivergence(s: tf.Tensor2D, t: tf.Tensor2D, mask: tf.Tensor1D, opts: KdLossOptions): tf.Tensor1D {
  const d = perPositionDivergence(t, s, opts);
  return tf.where(tf.greater(mask, 0), d, tf.zerosLike(d));
}

function logits(rows: number, vocab: number, magnitude: 'normal' | 'large', seed: number): tf.Tensor2D {
  return tf.tidy(() =>
    magnitude === 'large'
      ? (tf.randomUniform([rows, vocab], -80, 80, 'float32', seed) as tf.Tensor2D)
      : (tf.mul(tf.randomNormal([rows, vocab], 0, 1, 'float32', seed), 3) as tf.Tensor2D),
  );
}

const CASES = [
  { vocab: 1003, magnitude: 'normal' },
  { vocab: 4096, magnitude: 'normal' },
  { vocab: 4096, magnitude: 'large' },
  { vocab: 1003, magnitude: 'large' },
] as const;

test('fused divergence and its gradient w.r.t. the student logits match the composition, each kind, τ 1 and 2', async (t) => {
  const worst: Worst = new Map();
  await onEachBackend(async (backend) => {
    for (const { vocab, magnitude } of CASES) {
      for (const kind of KD_LOSS_KINDS) {
        for (const temperature of [1, 2]) {
          const label = `${backend} V ${vocab} ${magnitude} ${kind} τ ${temperature}`;
          await noLeaks(label, async () => {
            const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind, temperature };
            const s = logits(ROWS, vocab, magnitude, 1);
            const tt = logits(ROWS, vocab, magnitude, 2);
            const mask = tf.tensor1d(MASK);
            const w = tf.randomUniform([ROWS], 0.5, 1.5, 'float32', 3);
            const weighted = (f: typeof fusedKdDivergence) => (x: tf.Tensor) => tf.sum(tf.mul(f(x as tf.Tensor2D, tt, mask, opts), w));
            const got = tf.valueAndGrad(weighted(fusedKdDivergence))(s);
            const want = tf.valueAndGrad(weighted(composedDivergence))(s);
            const rowsGot = fusedKdDivergence(s, tt, mask, opts);
            const rowsWant = tf.tidy(() => composedDivergence(s, tt, mask, opts));
            const [vg, vw, gg, gw] = await read([rowsGot, rowsWant, got.grad, want.grad]);
            tf.dispose([s, tt, mask, w, got.value, want.value]);
            const errs = [relError(vg, vw), relError(gg, gw)];
            note(worst, backend, Math.max(...errs));
            assert.ok(
              errs.every((e) => e <= TOLERANCE),
              `${label}: rel errors value/gradient ${errs}`,
            );
            for (let r = 0; r < ROWS; r++) {
              if (MASK[r] !== 0) continue;
              assert.equal(vg[r], 0, `${label}: masked row ${r} has loss ${vg[r]}`);
              assert.ok(
                gg.subarray(r * vocab, (r + 1) * vocab).every((g) => g === 0),
                `${label}: masked row ${r} has a gradient`,
              );
            }
          });
        }
      }
    }
  });
  report(t, worst);
});

test('fused divergence: the gradient flows through the head matmul to hidden states and head', async (t) => {
  const worst: Worst = new Map();
  await onEachBackend(async (backend) => {
    for (const vocab of [1003, 4096]) {
      for (const [kind, temperature] of [
        ['forward_kl', 1],
        ['forward_kl', 2],
        ['reverse_kl', 2],
        ['jsd', 1],
        ['skew_kl', 2],
      ] as const) {
        const label = `${backend} V ${vocab} ${kind} τ ${temperature}`;
        await noLeaks(label, async () => {
          const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind, temperature };
          const h = tf.randomNormal([ROWS, 16], 0, 1, 'float32', 4) as tf.Tensor2D;
          const head = tf.randomNormal([vocab, 16], 0, 0.8, 'float32', 5) as tf.Tensor2D;
          const tt = logits(ROWS, vocab, 'normal', 6);
          const mask = tf.tensor1d(MASK);
          const loss = (f: typeof fusedKdDivergence) => (a: tf.Tensor, b: tf.Tensor) =>
            tf.mean(f(tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, false, true), tt, mask, opts)) as tf.Scalar;
          const got = tf.valueAndGrads(loss(fusedKdDivergence))([h, head]);
          const want = tf.valueAndGrads(loss(composedDivergence))([h, head]);
          const [v1, v2, h1, w1, h2, w2] = await read([got.value, want.value, ...got.grads, ...want.grads]);
          tf.dispose([h, head, tt, mask]);
          const errs = [relError(v1, v2), relError(h1, h2), relError(w1, w2)];
          note(worst, backend, Math.max(...errs));
          assert.ok(
            errs.every((e) => e <= TOLERANCE),
            `${label}: rel errors value/dHidden/dHead ${errs}`,
          );
        });
      }
    }
  });
  report(t, worst);
});

test('fused divergence: a masked row gives 0 loss and 0 gradient even when its logits are not finite', async () => {
  await onEachBackend(async (backend) => {
    // The composition's tape multiplies a 0 upstream gradient by the row's NaN softmax; only the fused op can pass
    // (webgpu's kernels, and those of any backend that registers them).
    if (backend !== 'webgpu' && !hasSoftmaxKlKernels()) return;
    await noLeaks(backend, async () => {
      for (const vocab of [1003, 4096]) {
        const s = tf.tidy(() => tf.concat([logits(2, vocab, 'normal', 7), tf.fill([1, vocab], NaN), tf.fill([1, vocab], Infinity)]) as tf.Tensor2D);
        const tt = logits(4, vocab, 'normal', 8);
        const mask = tf.tensor1d([1, 1, 0, 0]);
        const got = tf.valueAndGrad((x: tf.Tensor) => tf.sum(fusedKdDivergence(x as tf.Tensor2D, tt, mask, DEFAULT_KD_LOSS)))(s);
        const rows = fusedKdDivergence(s, tt, mask, DEFAULT_KD_LOSS);
        const [v, g] = await read([rows, got.grad]);
        tf.dispose([s, tt, mask, got.value]);
        assert.deepEqual([v[2], v[3]], [0, 0]);
        assert.ok(Number.isFinite(v[0]) && Number.isFinite(v[1]));
        assert.ok(
          g.subarray(2 * vocab).every((x) => x === 0),
          `V ${vocab}: masked rows have a gradient`,
        );
        assert.ok(g.subarray(0, 2 * vocab).every((x) => Number.isFinite(x)));
      }
    });
  });
});

/** The unchunked composition on hidden states (as test/losses/chunkedKd.test.ts has it), by tfjs's tape. */
function unchunked(th: tf.Tensor2D, tw: tf.Tensor2D, labels: tf.Tensor1D, mask: tf.Tensor1D, h: tf.Tensor2D, w: tf.Tensor2D, opts: KdLossOptions): tf.Scalar {
  const n = h.shape[0];
  const zs = tf.matMul(h, w, false, true) as tf.Tensor2D;
  const zt = tf.matMul(th, tw, false, true) as tf.Tensor2D;
  const shared = Math.min(zs.shape[1], zt.shape[1]);
  const kd = maskedMean(perPositionDivergence(tf.slice(zt, [0, 0], [n, shared]), tf.slice(zs, [0, 0], [n, shared]), opts), mask).loss;
  const ce = (opts.alpha ?? 1) < 1 ? maskedMean(tokenCrossEntropy(zs, labels), mask).loss : null;
  return mixLosses(ce, kd, opts);
}

test('chunked KD loss on hidden states (fused on webgpu, CE folded in) matches the unchunked composition', async (t) => {
  const worst: Worst = new Map();
  const n = 13;
  await onEachBackend(async (backend) => {
    // Elsewhere kdLossFromHidden is the composition's chunking, which test/losses/chunkedKd.test.ts checks (at
    // V = 37; at these V its analytic skew-KL gradient is ~1.0e-5 from the tape's on wasm, float32's doing).
    if (backend !== 'webgpu' && !hasSoftmaxKlKernels()) return;
    // Student wider (CE past the shared ids), teacher wider, each read as vec4 or not, equal (τ = 1: the CE shares
    // the KD's log-sum-exp); each kind meets each (τ, α) over the layouts (lavapipe runs the taped reference slowly).
    const layouts = [
      [1001, 997],
      [1000, 1004],
      [1004, 1000],
      [1003, 1003],
    ];
    const settings = [
      [1, 0.5],
      [2, 0.7],
      [2, 1],
    ] as const;
    const cases = layouts.flatMap(([vs, vt], p) => KD_LOSS_KINDS.map((kind, k) => ({ vs, vt, kind, setting: settings[(p + k) % settings.length] })));
    for (const {
      vs,
      vt,
      kind,
      setting: [temperature, alpha],
    } of cases) {
      const label = `${backend} V_s ${vs} V_t ${vt} ${kind} τ ${temperature} α ${alpha}`;
      await noLeaks(label, async () => {
        const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind, temperature, alpha };
        const h = tf.randomNormal([n, 8], 0, 1, 'float32', 11) as tf.Tensor2D;
        const w = tf.randomNormal([vs, 8], 0, 0.7, 'float32', 12) as tf.Tensor2D;
        const th = tf.randomNormal([n, 6], 0, 1, 'float32', 13) as tf.Tensor2D;
        const tw = tf.randomNormal([vt, 6], 0, 0.9, 'float32', 14) as tf.Tensor2D;
        const labels = tf.randomUniform([n], 0, vs, 'int32', 15) as tf.Tensor1D;
        const mask = tf.tensor1d(Array.from({ length: n }, (_, i) => (i % 4 === 1 ? 0 : 1)));
        const want = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => unchunked(th, tw, labels, mask, a as tf.Tensor2D, b as tf.Tensor2D, opts))([h, w]);
        const got = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => {
          const r = kdLossFromHidden({
            studentHidden: a as tf.Tensor2D,
            studentHead: b as tf.Tensor2D,
            teacherHidden: th,
            teacherHead: tw,
            labels: alpha < 1 ? labels : undefined,
            mask,
            options: opts,
            chunkSize: 5,
          });
          tf.dispose([r.kd, r.count, ...(r.ce ? [r.ce] : [])]);
          return r.loss;
        })([h, w]);
        const [v1, v2, h1, w1, h2, w2] = await read([got.value, want.value, ...got.grads, ...want.grads]);
        tf.dispose([h, w, th, tw, labels, mask]);
        const errs = [relError(v1, v2), relError(h1, h2), relError(w1, w2)];
        note(worst, backend, Math.max(...errs));
        assert.ok(
          errs.every((e) => e <= TOLERANCE),
          `${label}: rel errors value/dHidden/dHead ${errs}`,
        );
      });
    }
  });
  report(t, worst);
});

test('chunked KD loss: the kd, ce and count it reports match the composition', async () => {
  const n = 9;
  await onEachBackend(async (backend) => {
    await noLeaks(backend, async () => {
      const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, temperature: 2, alpha: 0.5 };
      const h = tf.randomNormal([n, 8], 0, 1, 'float32', 21) as tf.Tensor2D;
      const w = tf.randomNormal([1002, 8], 0, 0.7, 'float32', 22) as tf.Tensor2D;
      const th = tf.randomNormal([n, 6], 0, 1, 'float32', 23) as tf.Tensor2D;
      const tw = tf.randomNormal([998, 6], 0, 0.9, 'float32', 24) as tf.Tensor2D;
      const labels = tf.randomUniform([n], 0, 1002, 'int32', 25) as tf.Tensor1D;
      const mask = tf.tensor1d([1, 1, 0, 1, 1, 1, 0, 1, 1]);
      const r = kdLossFromHidden({ studentHidden: h, studentHead: w, teacherHidden: th, teacherHead: tw, labels, mask, options: opts, chunkSize: 4 });
      assert.ok(r.ce !== null);
      const ref = tf.tidy(() => {
        const zs = tf.matMul(h, w, false, true) as tf.Tensor2D;
        const zt = tf.matMul(th, tw, false, true) as tf.Tensor2D;
        const kd = maskedMean(perPositionDivergence(zt, tf.slice(zs, [0, 0], [n, 998]), opts), mask).loss;
        return [kd, maskedMean(tokenCrossEntropy(zs, labels), mask).loss];
      });
      const [kd, ce, count, kdRef, ceRef] = await read([r.kd, r.ce, r.count, ...ref]);
      tf.dispose([r.loss, h, w, th, tw, labels, mask]);
      assert.equal(count[0], 7);
      assert.ok(relError(kd, kdRef) <= TOLERANCE, `${backend}: kd ${kd[0]} vs ${kdRef[0]}`);
      assert.ok(relError(ce, ceRef) <= TOLERANCE, `${backend}: ce ${ce[0]} vs ${ceRef[0]}`);
      assert.equal(r.notes.length, 1, `${backend}: the vocabulary note is given once`);
    });
  });
});
