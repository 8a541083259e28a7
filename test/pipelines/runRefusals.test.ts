/**
 * run(recipe), the library's way in, refuses what the CLI refuses (issue 23, items 5 and 9): a --seq_length past
 * a Llama's max_position_embeddings (or GPT-2's n_positions), naming the model's config.json; and a run that fails
 * before its models and data are open leaves no <log_dir>/<name>/ behind, with no CLI around it to tidy up. A split
 * with no training sample says what it holds (issue 23, item 2, as evaluate does).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { distillationRecipe, type DistillationRecipe } from '../../src/recipe/config.ts';
import { ConfigError } from '../../src/errors.ts';
import { run } from '../../pipelines/run.ts';
import { fixture } from '../helpers/fixtures.ts';

const data = fixture('megatron', 'small_text_document');

function recipe(logDir: string, over: { seqLength?: number; split?: string; studentPath?: string; teacherPath?: string }): DistillationRecipe {
  return distillationRecipe({
    name: 'r',
    dir: logDir,
    studentPath: over.studentPath ?? fixture('llama-student'),
    teacherPath: over.teacherPath ?? fixture('llama-teacher'),
    backend: 'cpu',
    data: { dataPaths: data, seqLength: over.seqLength ?? 16, split: over.split ?? '80,20,0', seed: 7 },
    trainer: { maxSteps: 1, globalBatchSize: 1, microBatchSize: 1, valCheckInterval: 0, logInterval: 1 },
  });
}

test("run(recipe) refuses a --seq_length past the student's or the teacher's position range, before the run folder is made", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'run-refuse-'));
  try {
    const logDir = join(dir, 'logs');
    // The fixture Llamas have max_position_embeddings 128; 200 tokens fit the data (414 tokens), so only the model refuses.
    await assert.rejects(
      run(recipe(logDir, { seqLength: 200 }), { log: null }),
      (e: unknown) =>
        e instanceof ConfigError &&
        /--seq_length 200 is longer than the student's max_position_embeddings 128 \(.*llama-student.config\.json\).*RoPE.*Use --seq_length 128 or less/.test(
          e.message,
        ),
    );
    await assert.rejects(
      run(recipe(logDir, { seqLength: 100, teacherPath: fixture('gpt2-tiny') }), { log: null }),
      (e: unknown) => e instanceof ConfigError && /--seq_length 100 is longer than the teacher's n_positions 64 \(.*gpt2-tiny.config\.json\)/.test(e.message),
    );
    assert.ok(!existsSync(logDir), `${logDir} was made for a refused run`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('run(recipe) whose data has no training sample says what the split holds, and leaves no run folder', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'run-no-samples-'));
  try {
    const logDir = join(dir, 'logs');
    // 5% of the 20 documents for training: fewer than 100 + 1 tokens. Found after the models loaded.
    await assert.rejects(
      run(recipe(logDir, { seqLength: 100, split: '5,95,0' }), { log: null }),
      (e: unknown) =>
        e instanceof ConfigError &&
        /^no sample of --seq_length 100 \+ 1 = 101 tokens in the train split \(--split 5,95,0\): .*small_text_document holds \d+ tokens in 1 document\. Use --seq_length \d+ or less, more data, or a larger train share of --split\.$/.test(
          e.message,
        ),
    );
    assert.ok(!existsSync(join(logDir, 'r')), 'no empty run folder');
    assert.ok(!existsSync(logDir), 'nor the log_dir it would have made');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
