/**
 * Numerical faults end to end: a teacher whose final norm holds one NaN makes every KD loss non-finite.
 * --nan_policy stop ends the CLI run with the NonFiniteLossError message (exit 2, the user's error, not a crash);
 * --nan_policy skip skips the steps (counted in the checkpoint, weights untouched) and stops after 10 in a row.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readAllSafetensors, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { DistillError } from '../../src/errors.ts';
import { latestCheckpoint, readTrainingState } from '../../src/train/trainingCheckpoint.ts';
import { ROOT, fixture } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';
import { readAllTensors } from './killHarness.ts';

/** A copy of llama-teacher with model.norm.weight[0] = NaN. */
function nanTeacher(root: string): string {
  const dir = join(root, 'nan-teacher');
  mkdirSync(dir);
  copyFileSync(fixture('llama-teacher', 'config.json'), join(dir, 'config.json'));
  const tensors: TensorToWrite[] = [...readAllSafetensors(fixture('llama-teacher', 'model.safetensors'))].map(([name, t]) => ({
    name,
    dtype: 'F32',
    shape: t.shape,
    data: Float32Array.from(t.data),
  }));
  const norm = tensors.find((t) => t.name === 'model.norm.weight');
  assert.ok(norm, 'the fixture has model.norm.weight');
  norm.data[0] = NaN;
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  return dir;
}

function recipe(dir: string, teacher: string, maxSteps: number): DistillationRecipe {
  return fixturePairRecipe({
    name: 'nan',
    dir,
    teacherPath: teacher,
    trainer: { maxSteps, globalBatchSize: 2, microBatchSize: 1, saveInterval: 1, valCheckInterval: 0, logInterval: 1, nanPolicy: 'skip' },
  });
}

test('--nan_policy stop: the CLI ends with the NonFiniteLossError message and exit 2', () => {
  const root = mkdtempSync(join(tmpdir(), 'nan-cli-'));
  try {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        join(ROOT, 'src/cli/main.ts'),
        'run',
        '--name',
        'stop',
        '--log_dir',
        root,
        '--student_path',
        fixture('llama-student'),
        '--teacher_path',
        nanTeacher(root),
        '--data_paths',
        fixture('megatron', 'small_text_document'),
        '--seq_length',
        '16',
        '--gbs',
        '2',
        '--mbs',
        '1',
        '--max_steps',
        '3',
        '--val_check_interval',
        '0',
        '--nan_policy',
        'stop',
        '--backend',
        'cpu',
      ],
      { encoding: 'utf8', cwd: ROOT, env: { ...process.env, DISTILL_NO_PROGRESS: '1' } },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /step 1: loss NaN.* is not finite; stopping \(--nan_policy stop\)\. Check the data batch at sample \d+ and the teacher's weights/);
    assert.doesNotMatch(r.stderr, /internal error/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('--nan_policy skip: non-finite steps are skipped and counted, weights unchanged; 10 in a row stop the run', async () => {
  const root = mkdtempSync(join(tmpdir(), 'nan-skip-'));
  try {
    const teacher = nanTeacher(root);
    const r = await run(recipe(join(root, 'a'), teacher, 3), { log: null });
    assert.equal(r.steps.length, 3);
    assert.ok(
      r.steps.every((s) => s.skipped && !Number.isFinite(s.loss)),
      JSON.stringify(r.steps.map((s) => [s.step, s.skipped, s.loss])),
    );
    // Every checkpoint counts the skipped steps before it (the last one's own skip is the known gap tested below).
    assert.ok(readTrainingState(latestCheckpoint(r.runDir)!).skippedSteps >= 2);
    const before = readAllTensors(fixture('llama-student', 'model.safetensors'));
    const after = readAllTensors(join(r.studentDir, 'model.safetensors'));
    for (const [name, w] of before) assert.deepEqual(after.get(name), w, `${name} changed although every step was skipped`);
    // The 10th non-finite step in a row stops the run with a clear error.
    await assert.rejects(run(recipe(join(root, 'b'), teacher, 12), { log: null }), (e: unknown) => {
      assert.ok(e instanceof DistillError, String(e));
      assert.match((e as Error).message, /10 non-finite steps in a row; stopping\. The weights are unchanged since the last finite step/);
      return true;
    });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a checkpoint written after a skipped step counts that step in skippedSteps', async () => {
  const root = mkdtempSync(join(tmpdir(), 'nan-count-'));
  try {
    const r = await run(recipe(join(root, 'a'), nanTeacher(root), 3), { log: null });
    assert.equal(readTrainingState(latestCheckpoint(r.runDir)!).skippedSteps, 3);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
