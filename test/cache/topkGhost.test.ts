/**
 * Top-K with the ghost bucket through the cache: the fixture teacher's logits (and the fixture teacher model run by
 * cache-teacher on the fixture ids) are cached as top-8 float32, read back through cachedTeacherTargets, and the
 * loss against the fixture student's logits reproduces expected.json's topk8_ghost_kl (PyTorch) to 1e-5 relative.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readBatches } from '../../operators/readBatches.ts';
import { cachedTeacherTargets } from '../../operators/cachedTeacherTargets.ts';
import { TeacherCache, TeacherCachePartWriter } from '../../src/io/teacherCache.ts';
import { sparsifyLogits } from '../../src/cache/sparsify.ts';
import { sparsePerPosition } from '../../src/losses/sparseTargets.ts';
import { disposeBatch } from '../../src/train/batch.ts';
import type { CacheRows, CacheSpec } from '../../src/cache/spec.ts';
import { writeTeacherCache } from '../../pipelines/cacheTeacher.ts';
import { expectedJson, fixture, relError } from '../helpers/fixtures.ts';
import { onEachBackend } from '../helpers/backends.ts';
import { fixtureSource, fixtureTensors, tempDir, testFingerprint } from './helpers.ts';

const spec: CacheSpec = { method: 'topk', topK: 8, samples: 0, sampleSeed: 0, valueDtype: 'float32', temperature: 1 };

/** The masked-mean sparse KD of the fixture student against the cache in `dir`, read through the operator. */
async function lossThroughCache(dir: string): Promise<number> {
  const f = fixtureTensors();
  const cache = TeacherCache.open(dir);
  const op = cachedTeacherTargets(cache, { numSamples: 2, loss: { kind: 'forward_kl', temperature: 1 }, studentVocab: f.vocab });
  const [batch] = await lastValueFrom(
    readBatches(fixtureSource(f), { seqLength: f.seq, globalBatchSize: 2, microBatchSize: 2, startStep: 0, maxSteps: 1 }).pipe(op, toArray()),
  );
  const t = batch.teacher;
  assert.ok(t && t.kind === 'sparse' && t.targets.kind === 'topk_ghost');
  const value = tf.tidy(() => {
    const per = sparsePerPosition(tf.tensor2d(f.studentLogits, [f.rows * f.seq, f.vocab]), t.targets, 1);
    const mask = tf.tensor1d(f.mask);
    return tf.div(tf.sum(tf.mul(per, mask)), tf.sum(mask)).dataSync()[0];
  });
  disposeBatch(batch);
  op.release();
  cache.close();
  return value;
}

test('top-8 + ghost from cached fixture logits reproduces topk8_ghost_kl (≤1e-5 rel)', async (t) => {
  await selectBackend('cpu', { log: null });
  const want = expectedJson().losses.topk8_ghost_kl;
  const f = fixtureTensors();
  const tmp = tempDir('cache-topk-');
  try {
    const before = tf.memory().numTensors;
    const logits = tf.tensor2d(f.teacherLogits, [f.rows * f.seq, f.vocab]);
    const rows = await sparsifyLogits(logits, spec, { firstSample: 0, seqLength: f.seq, firstRow: 0 });
    logits.dispose();
    const w = new TeacherCachePartWriter(tmp.dir, testFingerprint(spec), { start: 0, end: 2 });
    w.write(0, 2, rows);
    w.finish();
    const got = await lossThroughCache(tmp.dir);
    const rel = Math.abs(got - want) / want;
    t.diagnostic(`topk8_ghost_kl ${got} vs ${want}: rel ${rel.toExponential(2)}`);
    assert.ok(rel <= 1e-5, `topk8_ghost_kl ${got} vs ${want} (rel ${rel.toExponential(2)})`);
    assert.equal(tf.memory().numTensors, before, 'tensors leaked');
  } finally {
    tmp.remove();
  }
});

test('cache-teacher running the fixture teacher on the fixture ids gives the same top-8 + ghost loss', async (t) => {
  await selectBackend('cpu', { log: null });
  const want = expectedJson().losses.topk8_ghost_kl;
  const f = fixtureTensors();
  const tmp = tempDir('cache-topk-model-');
  const teacher = await loadModel(fixture('llama-teacher'), { trainable: false });
  try {
    const r = await writeTeacherCache({
      teacher,
      teacherSha256: 'fixture',
      source: fixtureSource(f),
      dataFingerprint: 'fixture-ids',
      tokenizerSha256: 'unknown',
      data: { dataPaths: 'fixture', seqLength: f.seq, split: '100,0,0', seed: 0 },
      out: tmp.dir,
      spec,
      numSamples: 2,
      batchSamples: 1,
      partSamples: 1,
      chunkSize: 5,
    });
    assert.equal(r.written.length, 2);
    assert.ok(r.complete);
    const got = await lossThroughCache(tmp.dir);
    const rel = Math.abs(got - want) / want;
    t.diagnostic(`topk8_ghost_kl ${got} vs ${want}: rel ${rel.toExponential(2)}`);
    assert.ok(rel <= 1e-5, `topk8_ghost_kl ${got} vs ${want} (rel ${rel.toExponential(2)})`);
  } finally {
    teacher.dispose();
    tmp.remove();
  }
});

test('the cache rows (top-8 with ghost, and full) are the same on each backend present as on cpu', async () => {
  const f = fixtureTensors();
  const keys = { firstSample: 0, seqLength: f.seq, firstRow: 0 };
  const full: CacheSpec = { ...spec, method: 'full', topK: 0 };
  const rowsOf = async (): Promise<{ topk: CacheRows; full: CacheRows }> => {
    const logits = tf.tensor2d(f.teacherLogits, [f.rows * f.seq, f.vocab]);
    const rows = { topk: await sparsifyLogits(logits, spec, keys), full: await sparsifyLogits(logits, full, keys) };
    logits.dispose();
    return rows;
  };
  await selectBackend('cpu', { log: null });
  const ref = await rowsOf();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    // On webgpu this is the check that the rows are read back asynchronously: dataSync throws there.
    const got = await rowsOf();
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
    assert.deepEqual(got.topk.ids, ref.topk.ids, `${backend}: top-8 ids`);
    assert.ok(got.topk.ghost && ref.topk.ghost);
    const errs = [relError(got.topk.logProbs, ref.topk.logProbs), relError(got.topk.ghost, ref.topk.ghost), relError(got.full.logProbs, ref.full.logProbs)];
    assert.ok(
      errs.every((e) => e <= 1e-6),
      `${backend}: rel errors top-8 log-probs / ghost / full log-probs ${errs}`,
    );
  });
});
