/**
 * A cache refused for a run names only what differs (issue 23, item 10): a cache made at --seq_length 16 used at 8
 * says "seq_length differs", not first "data differs" over the same paths, split and seed. Given the run's data
 * flags, a data refusal names the flag that differs, or says the files changed when none does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { runMain } from '../../src/cli/runCommand.ts';
import { checkCacheForRun, type RunView } from '../../src/cache/compatibility.ts';
import { CacheMismatchError } from '../../src/cache/fingerprint.ts';
import type { CacheSpec } from '../../src/cache/spec.ts';
import { fixture } from '../helpers/fixtures.ts';
import { tempDir, testFingerprint } from './helpers.ts';

const SPEC: CacheSpec = { method: 'topk', topK: 8, samples: 0, sampleSeed: 0, valueDtype: 'float16', temperature: 1 };

function refusal(parts: string[], pattern: RegExp, absent?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof CacheMismatchError, `expected CacheMismatchError, got ${String(e)}`);
    assert.deepEqual(e.parts, parts, e.message);
    assert.match(e.message, pattern);
    if (absent) assert.doesNotMatch(e.message, absent);
    return true;
  };
}

test('distill run --teacher_cache at another --seq_length: only seq_length differs; at another --split, the --split', async () => {
  const tmp = tempDir('cache-names-');
  try {
    const data = { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 };
    const cache = join(tmp.dir, 'cache');
    await cacheTeacher({ teacherPath: fixture('llama-teacher'), data, out: cache, backend: 'cpu', numSamples: 4, spec: SPEC, batchSamples: 2, partSamples: 2 });
    const argv = [
      '--name',
      'r',
      '--log_dir',
      tmp.dir,
      '--student_path',
      fixture('llama-student'),
      '--teacher_cache',
      cache,
      '--data_paths',
      data.dataPaths,
      '--split',
      data.split,
      '--seed',
      String(data.seed),
      '--max_steps',
      '2',
      '--gbs',
      '2',
      '--mbs',
      '1',
      '--val_check_interval',
      '0',
      '--backend',
      'cpu',
    ];
    await assert.rejects(
      runMain([...argv, '--seq_length', '8']),
      refusal(['seq_length'], /does not fit this run: seq_length differs: the run's --seq_length 8, the cache's 16\.$/, /data differs|sample range/),
    );
    // The run hands the cache check its data flags, so a data refusal names the flag that differs.
    await assert.rejects(
      runMain([...argv.map((a) => (a === data.split ? '70,30,0' : a)), '--seq_length', '16']),
      refusal(['data'], /does not fit this run: data differs: the run's --split 70,30,0, the cache's 80,20,0\.$/, /--data_paths|--seed|fingerprint/),
    );
  } finally {
    tmp.remove();
  }
});

test("checkCacheForRun with the run's data flags names the flag that differs, or says the files changed", () => {
  const fp = testFingerprint(SPEC, { dataPaths: 'a/b 2 c/d', split: '80,20,0', dataSeed: 7, seqLength: 16, sampleEnd: 4 });
  const run = (over: Partial<RunView>): RunView => ({
    cacheDir: 'cache',
    dataFingerprint: fp.dataFingerprint,
    seqLength: 16,
    studentVocab: 1000,
    samplesNeeded: 4,
    loss: { kind: 'forward_kl', temperature: 1 },
    data: { dataPaths: ' a/b  2 c/d', split: '80/20/0', seed: 7 },
    ...over,
  });
  assert.match(checkCacheForRun(fp, run({})), /^teacher cache: cache/, 'the same flags in other spellings fit');
  const other = 'e'.repeat(64);
  assert.throws(
    () => checkCacheForRun(fp, run({ dataFingerprint: other, data: { dataPaths: 'a/b 2 c/d', split: '70,30,0', seed: 7 } })),
    refusal(['data'], /data differs: the run's --split 70,30,0, the cache's 80,20,0\.$/, /--data_paths|--seed/),
  );
  assert.throws(
    () => checkCacheForRun(fp, run({ dataFingerprint: other })),
    refusal(['data'], /data differs: the same --data_paths, --split and --seed, but the files changed since the cache was made/),
  );
  // At another seq_length the fingerprint cannot be compared; a seed that differs still can.
  assert.throws(
    () => checkCacheForRun(fp, run({ dataFingerprint: other, seqLength: 8, data: { dataPaths: 'x', split: '80,20,0', seed: 8 } })),
    refusal(['seq_length', 'data'], /seq_length differs: the run's --seq_length 8, the cache's 16; data differs: the run's --seed 8, the cache's 7\.$/),
  );
  // Without the flags (a caller that has only the fingerprint) the fingerprint line stays, at the same seq_length only.
  assert.throws(
    () => checkCacheForRun(fp, run({ dataFingerprint: other, data: undefined })),
    refusal(['data'], /made from --data_paths "a\/b 2 c\/d" --split 80,20,0 --seed 7/),
  );
  assert.throws(
    () => checkCacheForRun(fp, run({ dataFingerprint: other, seqLength: 8, samplesNeeded: 9, data: undefined })),
    refusal(['seq_length'], /seq_length differs/),
  );
});
