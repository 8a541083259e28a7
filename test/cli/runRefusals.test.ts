/**
 * `distill run` refusals a new user met (issue 23, items 5 and 9): a Llama whose max_position_embeddings is below
 * --seq_length is refused before anything loads, as GPT-2 is (by run and cache-teacher); a run that fails leaves no
 * empty <log_dir>/<name>/.
 * The command runs in this process (runMain, which src/cli/main.ts only dispatches to).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixture } from '../helpers/fixtures.ts';
import { runMain } from '../../src/cli/runCommand.ts';
import { cacheTeacherMain } from '../../src/cli/cacheTeacherCommand.ts';
import { ConfigError } from '../../src/errors.ts';

const data = fixture('megatron', 'small_text_document');

function runArgs(logDir: string, over: string[]): string[] {
  return [
    '--name',
    'r',
    '--log_dir',
    logDir,
    '--student_path',
    fixture('llama-student'),
    '--teacher_path',
    fixture('llama-teacher'),
    '--data_paths',
    data,
    '--max_steps',
    '1',
    '--gbs',
    '1',
    '--backend',
    'cpu',
    ...over,
  ];
}

test('a Llama whose max_position_embeddings is below --seq_length is refused, as GPT-2 is', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-refuse-'));
  try {
    // The fixture Llamas have max_position_embeddings 128; 200 tokens fit the data (414 tokens), so only the model refuses.
    await assert.rejects(
      runMain(runArgs(dir, ['--seq_length', '200'])),
      (e: unknown) =>
        e instanceof ConfigError &&
        /--seq_length 200 is longer than the student's max_position_embeddings 128 \(.*llama-student.config\.json\).*Use --seq_length 128 or less/.test(
          e.message,
        ),
    );
    await assert.rejects(
      runMain(runArgs(dir, ['--seq_length', '200', '--student_path', fixture('gpt2-tiny')])),
      (e: unknown) => e instanceof ConfigError && /--seq_length 200 is longer than the student's n_positions 64 .*learned position table/.test(e.message),
    );
    await assert.rejects(
      runMain(runArgs(dir, ['--seq_length', '100', '--teacher_path', fixture('gpt2-tiny')])),
      (e: unknown) => e instanceof ConfigError && /--seq_length 100 is longer than the teacher's n_positions 64/.test(e.message),
    );
    assert.ok(!existsSync(join(dir, 'r')), 'refused before the run folder is made');
    await assert.rejects(
      cacheTeacherMain([
        '--teacher_path',
        fixture('llama-teacher'),
        '--data_paths',
        data,
        '--seq_length',
        '200',
        '--out',
        join(dir, 'cache'),
        '--backend',
        'cpu',
      ]),
      (e: unknown) => e instanceof ConfigError && /--seq_length 200 is longer than the teacher's max_position_embeddings 128/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a run that fails leaves no empty run folder, and no log_dir it created; an existing log_dir stays', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-failed-'));
  try {
    // 5% of 20 documents for training: no sample of 100 + 1 tokens, found after the backend started and the models loaded.
    const tooShort = ['--seq_length', '100', '--split', '5,95,0'];
    const fresh = join(dir, 'fresh-log-dir');
    await assert.rejects(
      runMain(runArgs(fresh, tooShort)),
      (e: unknown) => e instanceof ConfigError && /no sample of --seq_length 100 \+ 1 = 101 tokens in the train split/.test(e.message),
    );
    assert.ok(!existsSync(fresh), `${fresh} left behind`);
    const existing = join(dir, 'existing');
    mkdirSync(existing);
    await assert.rejects(runMain(runArgs(existing, tooShort)), ConfigError);
    assert.ok(existsSync(existing), 'a log_dir that was there before stays');
    assert.ok(!existsSync(join(existing, 'r')), 'the empty run folder is removed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
