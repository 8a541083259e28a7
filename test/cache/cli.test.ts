/**
 * The CLI end to end: two `distill cache-teacher --shard i/2` jobs, `--merge`, then `distill run --teacher_cache`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, fixture } from '../helpers/fixtures.ts';
import { MANIFEST_FILE } from '../../src/cache/layout.ts';
import { tempDir } from './helpers.ts';

function distill(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('distill cache-teacher --shard i/n, --merge, then distill run --teacher_cache', () => {
  const tmp = tempDir('cache-cli-');
  try {
    const cache = join(tmp.dir, 'cache');
    const data = ['--data_paths', fixture('megatron', 'small_text_document'), '--seq_length', '16', '--split', '80,20,0', '--seed', '7'];
    const common = [
      '--teacher_path',
      fixture('llama-teacher'),
      ...data,
      '--out',
      cache,
      '--method',
      'topk',
      '--top_k',
      '16',
      '--value_dtype',
      'float16',
      '--max_steps',
      '3',
      '--gbs',
      '2',
      '--part_samples',
      '2',
      '--batch_samples',
      '2',
      '--backend',
      'wasm',
    ];
    for (const shard of ['1/2', '0/2']) {
      const r = distill(['cache-teacher', ...common, '--shard', shard]);
      assert.equal(r.code, 0, r.err);
    }
    const m = distill(['cache-teacher', '--out', cache, '--merge']);
    assert.equal(m.code, 0, m.err);
    assert.deepEqual(JSON.parse(m.out), { cache, parts: 3, samples: 6, manifest: true });
    assert.ok(existsSync(join(cache, MANIFEST_FILE)));
    const run = distill([
      'run',
      '--name',
      'r',
      '--log_dir',
      tmp.dir,
      '--student_path',
      fixture('llama-student'),
      '--teacher_cache',
      cache,
      ...data,
      '--max_steps',
      '3',
      '--gbs',
      '2',
      '--mbs',
      '1',
      '--val_check_interval',
      '0',
      '--backend',
      'wasm',
    ]);
    assert.equal(run.code, 0, run.err);
    assert.match(run.err, /teacher cache: .*top-16 \+ ghost, float16/);
    assert.equal(JSON.parse(run.out.trim().split('\n').pop()!).steps, 3);
    const bad = distill([
      'run',
      '--name',
      'bad',
      '--log_dir',
      tmp.dir,
      '--student_path',
      fixture('llama-student'),
      '--teacher_cache',
      cache,
      ...data.slice(0, 3),
      '12',
      '--max_steps',
      '3',
      '--gbs',
      '2',
      '--backend',
      'wasm',
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /seq_length differs/);
  } finally {
    tmp.remove();
  }
});
