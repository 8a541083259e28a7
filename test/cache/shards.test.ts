/**
 * Sharding, resume and crash safety of cache-teacher: --shard i/n parts join to the same rows as one unsharded run;
 * a folder with a part missing (and a temporary file left by a killed writer) or a truncated part is never read as
 * complete; a stopped job, rerun, writes only the parts that are missing; --merge writes a manifest that readers check.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { cacheTeacher, writeCacheManifest, type CacheTeacherArgs } from '../../pipelines/cacheTeacher.ts';
import { TeacherCache } from '../../src/io/teacherCache.ts';
import { CacheIncompleteError } from '../../src/cache/fingerprint.ts';
import { MANIFEST_FILE, parsePartFileName } from '../../src/cache/layout.ts';
import { FormatError } from '../../src/errors.ts';
import type { CacheRows } from '../../src/cache/spec.ts';
import { fixture } from '../helpers/fixtures.ts';
import { tempDir } from './helpers.ts';

const DATA = { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 };
const N = 7;

const args = (out: string, over: Partial<CacheTeacherArgs> = {}): CacheTeacherArgs => ({
  teacherPath: fixture('llama-teacher'),
  data: DATA,
  out,
  backend: 'cpu',
  numSamples: N,
  batchSamples: 1,
  partSamples: 2,
  spec: { method: 'sample', topK: 0, samples: 50, sampleSeed: 99, valueDtype: 'uint8', temperature: 1 },
  ...over,
});

function allRows(dir: string): CacheRows {
  const c = TeacherCache.open(dir);
  try {
    return c.rowsOf(Array.from({ length: N }, (_, i) => i));
  } finally {
    c.close();
  }
}

function assertSameRows(a: CacheRows, b: CacheRows): void {
  assert.equal(a.rows, N * DATA.seqLength);
  assert.deepEqual(a.offsets, b.offsets);
  assert.deepEqual(a.ids, b.ids);
  assert.deepEqual(a.counts, b.counts);
  assert.deepEqual(a.logProbs, b.logProbs);
}

const isIncomplete =
  (pattern: RegExp) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof CacheIncompleteError, `expected CacheIncompleteError, got ${String(e)}`);
    assert.match((e as Error).message, pattern);
    return true;
  };

test('shard i/n parts join to the same rows as one unsharded run; --merge writes the manifest', async () => {
  const tmp = tempDir('cache-shards-');
  try {
    const whole = join(tmp.dir, 'whole');
    const sharded = join(tmp.dir, 'sharded');
    const w = await cacheTeacher(args(whole));
    assert.equal(w.written.length, 4); // [0,2) [2,4) [4,6) [6,7)
    assert.ok(w.complete && existsSync(join(whole, MANIFEST_FILE)));
    let last;
    for (const index of [2, 0, 1]) {
      last = await cacheTeacher(args(sharded, { shard: { index, count: 3 } }));
      if (index !== 1) assert.throws(() => TeacherCache.open(sharded), isIncomplete(/incomplete: samples \[/));
    }
    assert.ok(last!.complete);
    assertSameRows(allRows(sharded), allRows(whole));
    assert.deepEqual(readdirSync(sharded).sort(), readdirSync(whole).sort());
    assert.deepEqual(writeCacheManifest(sharded), { parts: 4, samples: N });
  } finally {
    tmp.remove();
  }
});

test('a crashed job is never read as complete; a rerun writes only the missing parts', async () => {
  const tmp = tempDir('cache-crash-');
  try {
    const whole = join(tmp.dir, 'whole');
    await cacheTeacher(args(whole));
    const reference = allRows(whole);

    // A killed writer: one part missing, its temporary file left half-written, no manifest yet.
    const crashed = join(tmp.dir, 'crashed');
    cpSync(whole, crashed, { recursive: true });
    rmSync(join(crashed, MANIFEST_FILE));
    const victim = readdirSync(crashed).find((f) => parsePartFileName(f)?.start === 2)!;
    const bytes = readFileSync(join(crashed, victim));
    writeFileSync(join(crashed, `.${victim}.tmp-4242-0`), bytes.subarray(0, bytes.length >> 1));
    rmSync(join(crashed, victim));
    assert.throws(() => TeacherCache.open(crashed), isIncomplete(/samples \[2, 4\) .*have no part.*temporary file/));
    assert.throws(() => writeCacheManifest(crashed), isIncomplete(/cannot merge: samples \[2, 4\) have no part/));

    // A truncated file under a part's name (copied by hand, say) is refused as not complete, naming the file.
    const truncated = join(tmp.dir, 'truncated');
    cpSync(whole, truncated, { recursive: true });
    writeFileSync(join(truncated, victim), bytes.subarray(0, bytes.length - 100));
    assert.throws(
      () => TeacherCache.open(truncated),
      (e: unknown) => e instanceof FormatError && /not complete/.test(e.message) && e.message.includes(victim),
    );

    // A manifest that no longer matches the parts is refused.
    const edited = join(tmp.dir, 'edited');
    cpSync(whole, edited, { recursive: true });
    const other = readdirSync(edited).find((f) => parsePartFileName(f)?.start === 4)!;
    copyFileSync(join(edited, victim), join(edited, other)); // a part replaced by another file under its name
    assert.throws(
      () => TeacherCache.open(edited),
      (e: unknown) => e instanceof Error && /not complete|does not describe/.test(e.message),
    );

    // Resume: the rerun skips the three parts there, writes [2, 4), completes the folder; its rows are the same.
    const again = await cacheTeacher(args(crashed));
    assert.deepEqual(again.written, [{ start: 2, end: 4 }]);
    assert.equal(again.skipped.length, 3);
    assert.ok(again.complete);
    assert.ok(!readdirSync(crashed).some((f) => f.includes('.tmp-')), 'the manifest step removes debris of killed writers');
    assertSameRows(allRows(crashed), reference);
  } finally {
    tmp.remove();
  }
});

test('a stopped job completes the part in hand, and the rerun continues where it stopped', async () => {
  const tmp = tempDir('cache-stop-');
  try {
    const out = join(tmp.dir, 'c');
    const ac = new AbortController();
    const first = await cacheTeacher(
      args(out, {
        signal: ac.signal,
        log: (l) => {
          if (/wrote samples/.test(l)) ac.abort();
        },
      }),
    );
    assert.equal(first.written.length, 1);
    assert.equal(first.complete, false);
    assert.throws(() => TeacherCache.open(out), isIncomplete(/incomplete/));
    const second = await cacheTeacher(args(out));
    assert.equal(second.written.length, 3);
    assert.ok(second.complete);
    assert.equal(allRows(out).rows, N * DATA.seqLength);
  } finally {
    tmp.remove();
  }
});
