/**
 * Every value of expected.json `losses` (PyTorch float32, see the fixture README) from the llama teacher and
 * student logits under kd_mask, on each backend present, to ≤ 1e-5 relative; and the zero-mask guard.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { onEachBackend, readScalars } from '../helpers/backends.ts';
import { expectedJson } from '../helpers/fixtures.ts';
import { asTensor, logits2d, lossFixture } from './lossFixtures.ts';
import { perPositionDivergence } from '../../src/losses/divergences.ts';
import { maskedMean } from '../../src/losses/maskedMean.ts';
import { nextTokenCrossEntropy } from '../../src/losses/crossEntropy.ts';
import { kdRatioOf, kdScale, mixLosses, validateKdOptions } from '../../src/losses/mixing.ts';
import { teacherTopK, topKGhostKl, topKRenormKl } from '../../src/losses/sparseTargets.ts';
import { DEFAULT_KD_LOSS, type KdLossOptions } from '../../src/losses/types.ts';
import { ConfigError } from '../../src/errors.ts';

const opts = (o: Partial<KdLossOptions>): KdLossOptions => ({ ...DEFAULT_KD_LOSS, ...o });

/** key → how to compute it from teacher/student logits [N, V] as a per-position [N] tensor (and a scale). */
const CASES: Record<string, { per: (t: tf.Tensor2D, s: tf.Tensor2D) => tf.Tensor1D; scale?: number }> = {
  forward_kl_T1: { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'forward_kl' })) },
  forward_kl_T2: { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'forward_kl', temperature: 2 })) },
  forward_kl_T2_scaled: {
    per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'forward_kl', temperature: 2 })),
    scale: kdScale(opts({ temperature: 2, scaleByTemperatureSquared: true })),
  },
  reverse_kl: { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'reverse_kl' })) },
  'jsd_beta_0.5': { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'jsd', jsdBeta: 0.5 })) },
  'jsd_beta_0.1': { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'jsd', jsdBeta: 0.1 })) },
  'skew_kl_lambda_0.1': { per: (t, s) => perPositionDivergence(t, s, opts({ kind: 'skew_kl', skewLambda: 0.1 })) },
  topk8_renorm_kl: { per: (t, s) => topKRenormKl(s, teacherTopK(t, 8)) },
  topk8_ghost_kl: { per: (t, s) => topKGhostKl(s, teacherTopK(t, 8)) },
};

test('expected.json losses reproduced to ≤ 1e-5 relative on every backend', async () => {
  const expected = expectedJson().losses;
  const fx = lossFixture();
  const keys = [...Object.keys(CASES), 'ce_next_token'];
  assert.deepEqual([...keys].sort(), Object.keys(expected).sort(), 'every golden is covered');
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const worst: string[] = [];
    const cases = Object.entries(CASES);
    const losses = tf.tidy(() => {
      const t = logits2d(fx.teacher);
      const s = logits2d(fx.student);
      const mask = asTensor<tf.Rank.R2>(fx.mask).reshape([-1]) as tf.Tensor1D;
      const kd = cases.map(([, c]) => maskedMean(c.per(t, s), mask).loss);
      const ce = nextTokenCrossEntropy(
        tf.tensor3d(fx.student.data as Float32Array, fx.student.shape as [number, number, number]),
        asTensor<tf.Rank.R2>(fx.inputIds),
        asTensor<tf.Rank.R2>(fx.mask),
      );
      return [...kd, ce.loss];
    });
    const values = await readScalars(losses);
    for (const [i, [key, c]] of cases.entries()) {
      const got = values[i] * (c.scale ?? 1);
      const rel = Math.abs(got - expected[key]) / Math.abs(expected[key]);
      worst.push(`${key} ${rel.toExponential(2)}`);
      assert.ok(rel <= 1e-5, `${backend} ${key}: got ${got}, expected ${expected[key]}, rel ${rel}`);
    }
    const got = values[cases.length];
    const rel = Math.abs(got - expected.ce_next_token) / expected.ce_next_token;
    worst.push(`ce_next_token ${rel.toExponential(2)}`);
    assert.ok(rel <= 1e-5, `${backend} ce_next_token: got ${got}, expected ${expected.ce_next_token}, rel ${rel}`);
    console.log(`${backend}: ${worst.join(', ')}`);
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('zero mask: loss 0 and count 0, no NaN; mixing follows (1 − α)·CE + α·KD·τ²', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const out = tf.tidy(() => {
      const t = tf.randomNormal([5, 11], 0, 1, 'float32', 1) as tf.Tensor2D;
      const s = tf.randomNormal([5, 11], 0, 1, 'float32', 2) as tf.Tensor2D;
      const { loss, count } = maskedMean(perPositionDivergence(t, s, opts({})), tf.zeros([5]));
      const withNaN = maskedMean(tf.tensor1d([1, NaN, 3]), tf.tensor1d([1, 0, 1]));
      const o = opts({ temperature: 2, scaleByTemperatureSquared: true, kdRatio: 0.25 });
      const mixed = mixLosses(tf.scalar(3), tf.scalar(0.5), o);
      const kdOnly = mixLosses(null, tf.scalar(0.5), opts({ temperature: 2, scaleByTemperatureSquared: false }));
      return [loss, count, withNaN.loss, mixed, kdOnly];
    });
    const [loss, count, withNaN, mixed, kdOnly] = await readScalars(out);
    assert.equal(loss, 0, backend);
    assert.equal(count, 0, backend);
    // A NaN at a masked position does not leak into the mean.
    assert.equal(withNaN, 2);
    assert.ok(Math.abs(mixed - (0.75 * 3 + 0.25 * 0.5 * 4)) < 1e-6);
    assert.equal(kdOnly, 0.5);
    assert.equal(tf.memory().numTensors, before);
  });
});

test('option checks name the option', () => {
  assert.throws(
    () => validateKdOptions(opts({ kind: 'jsd', jsdBeta: 0 })),
    (e: unknown) => e instanceof ConfigError && /jsdBeta/.test(String(e)),
  );
  assert.throws(() => validateKdOptions(opts({ temperature: 0 })), ConfigError);
  assert.throws(() => validateKdOptions(opts({ kind: 'skew_kl', skewLambda: 1 })), ConfigError);
  assert.throws(() => validateKdOptions(opts({ kdRatio: 1.5 })), ConfigError);
  validateKdOptions(DEFAULT_KD_LOSS);
});

test('α is kdRatio; its 0.1 name alpha is read for one release, and both names with different values are refused', async () => {
  assert.equal(kdRatioOf(DEFAULT_KD_LOSS), 1, 'absent: pure KD');
  assert.equal(kdRatioOf(opts({ kdRatio: 0.25 })), 0.25);
  assert.equal(kdRatioOf(opts({ alpha: 0.25 })), 0.25);
  assert.equal(kdRatioOf(opts({ kdRatio: 0.25, alpha: 0.25 })), 0.25);
  assert.throws(
    () => validateKdOptions(opts({ kdRatio: 0.25, alpha: 0.5 })),
    (e: unknown) => e instanceof ConfigError && /kdRatio 0\.25 and alpha 0\.5.*give kdRatio only/.test(e.message),
  );
  assert.throws(
    () => validateKdOptions(opts({ alpha: 1.5 })),
    (e: unknown) => e instanceof ConfigError && /kdRatio 1\.5: must be in \[0, 1\]/.test(e.message),
  );
  const [byNew, byOld] = await readScalars(
    tf.tidy(() => [mixLosses(tf.scalar(3), tf.scalar(0.5), opts({ kdRatio: 0.25 })), mixLosses(tf.scalar(3), tf.scalar(0.5), opts({ alpha: 0.25 }))]),
  );
  assert.equal(byOld, byNew);
  assert.equal(byNew, 0.75 * 3 + 0.25 * 0.5);
});
