/**
 * Sampled caches: over many seeds, the mean of the sampled KD estimate (50 draws per position, with the teacher's
 * log-probs of the drawn ids) equals the full forward KL of the fixture pair within sampling error; the rows go
 * through the cache's Arrow columns and back. Draws depend only on (seed, sample, position).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Schema } from 'apache-arrow';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { sparsifyLogits } from '../../src/cache/sparsify.ts';
import { buildRecordBatch, cacheFields, decodeRecordBatch } from '../../src/cache/columns.ts';
import { teacherTargetsFromRows } from '../../src/cache/targets.ts';
import { sparsePerPosition } from '../../src/losses/sparseTargets.ts';
import { drawRow } from '../../src/cache/sampling.ts';
import type { CacheSpec } from '../../src/cache/spec.ts';
import { expectedJson } from '../helpers/fixtures.ts';
import { fixtureTensors, testFingerprint } from './helpers.ts';

test('the sampled estimate averages to the full forward KL over seeds (within 4 standard errors)', async (t) => {
  await selectBackend('cpu', { log: null });
  const exact = expectedJson().losses.forward_kl_T1;
  const f = fixtureTensors();
  const n = f.rows * f.seq;
  const teacher = tf.tensor2d(f.teacherLogits, [n, f.vocab]);
  const student = tf.tensor2d(f.studentLogits, [n, f.vocab]);
  const mask = tf.tensor1d(f.mask);
  const estimates: number[] = [];
  const SEEDS = 200;
  for (let seed = 0; seed < SEEDS; seed++) {
    const spec: CacheSpec = { method: 'sample', topK: 0, samples: 50, sampleSeed: seed, valueDtype: 'float32', temperature: 1 };
    const fp = testFingerprint(spec);
    const rows = await sparsifyLogits(teacher, spec, { firstSample: 0, seqLength: f.seq, firstRow: 0 });
    // Through the cache's columns: what a reader decodes is what was drawn.
    const schema = new Schema(cacheFields(fp));
    const decoded = decodeRecordBatch('mem', 0, buildRecordBatch(schema, fp, 0, 2, rows), fp, 0, 2);
    assert.deepEqual(decoded.counts, rows.counts);
    const targets = teacherTargetsFromRows(decoded, fp, {
      loss: { kind: 'forward_kl', temperature: 1 },
      studentVocab: f.vocab,
      topk: 'topk_ghost',
      identity: () => {
        throw new Error('unused');
      },
      samples: [0, 1],
    });
    assert.ok(targets.kind === 'sparse' && targets.targets.kind === 'sampled');
    const est = tf.tidy(() => tf.div(tf.sum(tf.mul(sparsePerPosition(student, targets.targets, 1), mask)), tf.sum(mask)).dataSync()[0]);
    estimates.push(est);
    targets.targets.ids.dispose();
    if (targets.targets.kind === 'sampled') {
      targets.targets.counts.dispose();
      targets.targets.logProbs?.dispose();
    }
  }
  teacher.dispose();
  student.dispose();
  mask.dispose();
  const mean = estimates.reduce((a, x) => a + x, 0) / SEEDS;
  const sd = Math.sqrt(estimates.reduce((a, x) => a + (x - mean) ** 2, 0) / (SEEDS - 1));
  const se = sd / Math.sqrt(SEEDS);
  t.diagnostic(`mean ${mean.toExponential(4)} ± ${se.toExponential(2)} (se) vs exact ${exact.toExponential(4)}; one estimate's sd ${sd.toExponential(2)}`);
  assert.ok(Math.abs(mean - exact) <= 4 * se, `mean of ${SEEDS} sampled estimates ${mean} vs forward KL ${exact} (se ${se})`);
  assert.ok(sd > 0, 'different seeds give different draws');
});

test('draws are N in total, distinct ids in order, and the same for the same seed', () => {
  const lp = Float32Array.from([Math.log(0.5), Math.log(0.25), Math.log(0.125), Math.log(0.125), -Infinity]);
  const a = drawRow(lp, 1000, 7);
  assert.deepEqual(drawRow(lp, 1000, 7), a);
  assert.equal(
    a.counts.reduce((x, y) => x + y, 0),
    1000,
  );
  assert.ok(!a.ids.includes(4), 'an id of probability 0 is never drawn');
  assert.deepEqual(
    [...a.ids].sort((x, y) => x - y),
    a.ids,
  );
  assert.ok(Math.abs(a.counts[0] / 1000 - 0.5) < 0.05, `p(0) ≈ 0.5, got ${a.counts[0] / 1000}`);
});
