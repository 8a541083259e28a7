/**
 * A stale or mismatched cache is refused before training, naming what differs: a teacher whose weights changed
 * (one float edited in a temp copy), other data (split), another seq_length, a student vocabulary that is not the
 * cache's, a run longer than the cache; and cache-teacher will not add parts of another teacher to a folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS, type DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { CacheMismatchError } from '../../src/cache/fingerprint.ts';
import { checkCacheForRun } from '../../src/cache/compatibility.ts';
import { TeacherCache } from '../../src/io/teacherCache.ts';
import type { CacheSpec } from '../../src/cache/spec.ts';
import { fixture } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';
import { tempDir } from './helpers.ts';

const DATA = { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 };
const SPEC: CacheSpec = { method: 'topk', topK: 8, samples: 0, sampleSeed: 0, valueDtype: 'float16', temperature: 1 };

function recipe(
  dir: string,
  name: string,
  over: { teacherPath?: string; teacherCache: string; data?: Partial<typeof DATA>; maxSteps?: number },
): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    teacherPath: over.teacherPath,
    teacherCache: over.teacherCache,
    data: { ...DATA, ...over.data },
    trainer: { maxSteps: over.maxSteps ?? 2, globalBatchSize: 2, microBatchSize: 1, saveInterval: 2, valCheckInterval: 0 },
    // NeMo's default schedule, as these runs have always had (not the fixture pair's fast one).
    optim: DEFAULTS.optim,
  });
}

function refusedFor(part: string, pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof CacheMismatchError, `expected CacheMismatchError, got ${String(e)}`);
    assert.ok(e.parts.includes(part), `parts ${e.parts} should include ${part}: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  };
}

/** A copy of the fixture teacher with one weight changed by a small amount (the file stays valid). */
function editedTeacher(dir: string): string {
  const copy = join(dir, 'teacher-edited');
  cpSync(fixture('llama-teacher'), copy, { recursive: true });
  const path = join(copy, 'model.safetensors');
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const at = 8 + headerLen + 4 * 100; // the 101st float of the first tensor
  buf.writeFloatLE(buf.readFloatLE(at) + 1e-3, at);
  writeFileSync(path, buf);
  return copy;
}

test('a stale cache is refused, naming the part that differs', async () => {
  const tmp = tempDir('cache-stale-');
  try {
    const cacheDir = join(tmp.dir, 'cache');
    await cacheTeacher({
      teacherPath: fixture('llama-teacher'),
      data: DATA,
      out: cacheDir,
      backend: 'cpu',
      numSamples: 4,
      spec: SPEC,
      batchSamples: 2,
      partSamples: 2,
    });

    // The cache fits its own run (and the teacher is not needed for it).
    const ok = await run(recipe(tmp.dir, 'ok', { teacherCache: cacheDir }), { log: null });
    assert.equal(ok.steps.length, 2);

    const edited = editedTeacher(tmp.dir);
    await assert.rejects(
      run(recipe(tmp.dir, 'teacher', { teacherCache: cacheDir, teacherPath: edited }), { log: null }),
      refusedFor('teacher', /teacher differs/),
    );
    await assert.rejects(
      run(recipe(tmp.dir, 'split', { teacherCache: cacheDir, data: { split: '70,30,0' } }), { log: null }),
      refusedFor('data', /data differs/),
    );
    await assert.rejects(
      run(recipe(tmp.dir, 'seq', { teacherCache: cacheDir, data: { seqLength: 8 } }), { log: null }),
      refusedFor('seq_length', /seq_length differs: the run's --seq_length 8, the cache's 16/),
    );
    await assert.rejects(
      run(recipe(tmp.dir, 'long', { teacherCache: cacheDir, maxSteps: 5 }), { log: null }),
      refusedFor('sample range', /sample range differs/),
    );

    // The student's vocabulary (no fixture student has another one: checked on the fingerprint directly).
    const cache = TeacherCache.open(cacheDir);
    assert.throws(
      () =>
        checkCacheForRun(cache.fingerprint, {
          cacheDir,
          dataFingerprint: cache.fingerprint.dataFingerprint,
          seqLength: 16,
          studentVocab: 32000,
          samplesNeeded: 4,
          loss: { kind: 'forward_kl', temperature: 1 },
        }),
      refusedFor('vocabulary', /vocabulary differs: the student has 32000 ids, the cache's teacher 1000/),
    );
    cache.close();

    // cache-teacher into the same folder from the edited teacher: refused rather than mixing two teachers' parts.
    await assert.rejects(
      cacheTeacher({ teacherPath: edited, data: DATA, out: cacheDir, backend: 'cpu', numSamples: 4, spec: SPEC, batchSamples: 2, partSamples: 2 }),
      refusedFor('teacher', /belongs to another cache/),
    );
  } finally {
    tmp.remove();
  }
});
