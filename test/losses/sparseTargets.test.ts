/**
 * Sparse teacher targets: chunked == unchunked autodiff for top-K renorm / ghost / sampled, temperature rules,
 * and the sampled estimator's expectation over many seeded draws against the full forward KL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { onEachBackend, readAndDispose, tensorsIn, tidyKeep } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import { sparseKdLossFromHidden } from '../../src/losses/chunkedSparseKd.ts';
import { divergenceGradient, logSoftmax, perPositionDivergence } from '../../src/losses/divergences.ts';
import { maskedMean } from '../../src/losses/maskedMean.ts';
import { mixLosses } from '../../src/losses/mixing.ts';
import { tokenCrossEntropy } from '../../src/losses/crossEntropy.ts';
import { sampledKl, sparseGradient, sparsePerPosition, teacherTopK, topKGhostKl, type SparseTargets } from '../../src/losses/sparseTargets.ts';
import { DEFAULT_KD_LOSS, type KdLossOptions } from '../../src/losses/types.ts';
import { ConfigError } from '../../src/errors.ts';

const N = 11;
const H = 8;
const V = 29;

/** mulberry32: a seeded uniform [0, 1) so the sampling test is reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Distinct ids and counts of `draws` samples from each row of probs [N, V], padded to the widest row. */
function sampleTargets(probs: Float32Array, n: number, v: number, draws: number, next: () => number, logPt: Float32Array | null) {
  const rowsIds: number[][] = [];
  const rowsCounts: number[][] = [];
  for (let r = 0; r < n; r++) {
    const counts = new Map<number, number>();
    for (let d = 0; d < draws; d++) {
      let u = next();
      let id = v - 1;
      for (let j = 0; j < v; j++) {
        u -= probs[r * v + j];
        if (u < 0) {
          id = j;
          break;
        }
      }
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    rowsIds.push([...counts.keys()]);
    rowsCounts.push([...counts.values()]);
  }
  const k = Math.max(...rowsIds.map((r) => r.length));
  const ids = new Int32Array(n * k);
  const cnt = new Float32Array(n * k);
  const lp = new Float32Array(n * k);
  for (let r = 0; r < n; r++) {
    rowsIds[r].forEach((id, j) => {
      ids[r * k + j] = id;
      cnt[r * k + j] = rowsCounts[r][j];
      if (logPt) lp[r * k + j] = logPt[r * v + id];
    });
    // Padding: id 0, count 0, and a log p_t of −inf that the estimator must select out.
    for (let j = rowsIds[r].length; j < k; j++) lp[r * k + j] = -Infinity;
  }
  return { ids, cnt, lp, k };
}

test('sparse targets: chunked == unchunked autodiff (renorm, ghost, sampled), CE mixed in', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    let worst = 0;
    const temperature = 2;
    // Kept across the host read that the sampling needs (a tidy cannot span an await); disposed at the end.
    const x = tidyKeep(() => {
      const zt = tf.mul(tf.randomNormal([N, V], 0, 1, 'float32', 5), 2) as tf.Tensor2D;
      const lpT = logSoftmax(zt, temperature);
      return {
        h: tf.randomNormal([N, H], 0, 1, 'float32', 3) as tf.Tensor2D,
        w: tf.randomNormal([V, H], 0, 0.8, 'float32', 4) as tf.Tensor2D,
        labels: tf.randomUniform([N], 0, V, 'int32', 6) as tf.Tensor1D,
        mask: tf.tensor1d(Array.from({ length: N }, (_, i) => (i % 3 === 2 ? 0 : 1))),
        topk: teacherTopK(zt, 5, temperature),
        topkAt1: teacherTopK(zt, 5, 1),
        probs: tf.exp(lpT),
        lpT,
      };
    });
    const [probs, lpT] = await readAndDispose([x.probs, x.lpT]);
    const s = sampleTargets(probs as Float32Array, N, V, 50, rng(9), lpT as Float32Array);
    const sampled = {
      ids: tf.tensor2d(s.ids, [N, s.k], 'int32'),
      counts: tf.tensor2d(s.cnt, [N, s.k]),
      logProbs: tf.tensor2d(s.lp, [N, s.k]),
      temperature,
    };
    const all: SparseTargets[] = [
      { kind: 'topk_renorm', ...x.topk },
      { kind: 'topk_renorm', ...x.topkAt1 }, // made at τ 1, used at τ 2
      { kind: 'topk_ghost', ...x.topk },
      { kind: 'sampled', ...sampled },
      { kind: 'sampled', ids: sampled.ids, counts: sampled.counts, temperature },
    ];
    const { h, w, labels, mask } = x;
    const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, temperature, kdRatio: 0.7 };
    for (const targets of all) {
      const [rv, rh, rw] = await readAndDispose(
        tf.tidy(() => {
          const ref = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => {
            const z = tf.matMul(a, b, false, true) as tf.Tensor2D;
            const kd = maskedMean(sparsePerPosition(z, targets, temperature), mask).loss;
            return mixLosses(maskedMean(tokenCrossEntropy(z, labels), mask).loss, kd, opts);
          })([h, w]);
          return [ref.value, ...ref.grads];
        }),
      );
      for (const chunkSize of [1, 4, 11, 16]) {
        const [gv, gh, gw] = await readAndDispose(
          tf.tidy(() => {
            const got = tf.valueAndGrads(
              (a: tf.Tensor, b: tf.Tensor) =>
                sparseKdLossFromHidden({ studentHidden: a as tf.Tensor2D, studentHead: b as tf.Tensor2D, targets, labels, mask, options: opts, chunkSize })
                  .loss,
            )([h, w]);
            return [got.value, ...got.grads];
          }),
        );
        const errs = [relError(gv, rv), relError(gh, rh), relError(gw, rw)];
        worst = Math.max(worst, ...errs);
        assert.ok(
          errs.every((e) => e <= 1e-5),
          `${backend} ${targets.kind} chunk ${chunkSize}: ${errs}`,
        );
      }
    }
    tf.dispose([...tensorsIn(x), ...tensorsIn(sampled)]);
    console.log(`${backend}: worst relative error ${worst.toExponential(2)}`);
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('ghost and sampled targets refuse a temperature other than the one they were made at', () => {
  tf.tidy(() => {
    const zt = tf.randomNormal([3, 10], 0, 1, 'float32', 1) as tf.Tensor2D;
    const zs = tf.randomNormal([3, 10], 0, 1, 'float32', 2) as tf.Tensor2D;
    assert.throws(() => topKGhostKl(zs, teacherTopK(zt, 4, 1), 2), ConfigError);
    const ids = tf.tensor2d([[1], [2], [3]], [3, 1], 'int32');
    assert.throws(() => sampledKl(zs, { ids, counts: tf.ones([3, 1]) as tf.Tensor2D, temperature: 1 }, 2), ConfigError);
  });
});

test('sampled KD is unbiased: its mean over many draws equals the full forward KL (value and gradient)', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const n = 6;
    const v = 23;
    const temperature = 1.5;
    const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, temperature };
    // zs is kept for the trials below, which read each estimate to the host (a tidy cannot span an await).
    const { zs, exact } = tidyKeep(() => {
      const zt = tf.mul(tf.randomNormal([n, v], 0, 1, 'float32', 41), 2) as tf.Tensor2D;
      const zs = tf.mul(tf.randomNormal([n, v], 0, 1, 'float32', 42), 2) as tf.Tensor2D;
      const lpT = logSoftmax(zt, temperature);
      return {
        zs,
        exact: [
          perPositionDivergence(zt, zs, opts),
          tf.neg(tf.sum(tf.mul(tf.exp(lpT), lpT), -1)),
          divergenceGradient(lpT, logSoftmax(zs, temperature), opts),
          tf.exp(lpT),
          lpT,
        ],
      };
    });
    const [fullKl, entropy, fullGrad, probs, lp] = await readAndDispose(exact);
    const trials = 300;
    const next = rng(2025);
    const sum = new Float64Array(n);
    const sumSq = new Float64Array(n);
    const sumCe = new Float64Array(n);
    const gradSum = new Float64Array(n * v);
    for (let t = 0; t < trials; t++) {
      const s = sampleTargets(probs as Float32Array, n, v, 50, next, lp as Float32Array);
      const [est, ce, g] = await readAndDispose(
        tf.tidy(() => {
          const ids = tf.tensor2d(s.ids, [n, s.k], 'int32');
          const counts = tf.tensor2d(s.cnt, [n, s.k]);
          return [
            sampledKl(zs, { ids, counts, logProbs: tf.tensor2d(s.lp, [n, s.k]), temperature }, temperature),
            sampledKl(zs, { ids, counts, temperature }, temperature),
            sparseGradient(zs, { kind: 'sampled', ids, counts, temperature }, temperature),
          ];
        }),
      );
      for (let i = 0; i < n; i++) {
        sum[i] += est[i];
        sumSq[i] += est[i] ** 2;
        sumCe[i] += ce[i];
      }
      for (let j = 0; j < n * v; j++) gradSum[j] += g[j];
    }
    zs.dispose();
    for (let i = 0; i < n; i++) {
      const mean = sum[i] / trials;
      const se = Math.sqrt((sumSq[i] / trials - mean ** 2) / trials);
      assert.ok(Math.abs(mean - fullKl[i]) <= 4 * se + 1e-6, `${backend} row ${i}: mean ${mean} vs KL ${fullKl[i]} (se ${se})`);
      // Without the teacher's log-probabilities the value estimates the cross-entropy = KL + H(p_t).
      assert.ok(Math.abs(sumCe[i] / trials - (fullKl[i] + entropy[i])) <= 4 * se + 1e-3, `${backend} row ${i}: CE`);
    }
    // E[p_s − c/N] = p_s − p_t exactly: the gradient's mean converges at the sampling rate.
    const gradMean = Array.from(gradSum, (x) => x / trials);
    const err = gradMean.reduce((m, x, j) => Math.max(m, Math.abs(x - fullGrad[j])), 0);
    assert.ok(err < 0.02, `${backend}: sampled gradient mean off by ${err}`);
    console.log(
      `${backend}: sampled KD over ${trials} draws of 50: worst |mean − KL| / se = ${Math.max(...Array.from(sum, (x, i) => Math.abs(x / trials - fullKl[i]) / Math.sqrt((sumSq[i] / trials - (x / trials) ** 2) / trials))).toFixed(2)}, gradient max abs err ${err.toExponential(2)}`,
    );
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});
