/**
 * Issue 23, item 7: what a resume says. Re-running a finished run says it is finished and returns its last step
 * (from the checkpoint) instead of an empty progress bar; a resume with a changed recipe names each change and
 * what it does (the learning rate the schedule now gives, a loss that no longer compares); settings that do not
 * change the training are not mentioned; another run's checkpoint is still refused (run.test.ts). A finished run
 * whose final save was lost saves its student when run again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { describeResumeChanges } from '../../src/recipe/resumeChanges.ts';
import { learningRate } from '../../src/recipe/trainingObjects.ts';
import { run } from '../../pipelines/run.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

function recipe(dir: string, over: { maxSteps?: number; lr?: number; kind?: 'forward_kl' | 'reverse_kl'; saveInterval?: number } = {}): DistillationRecipe {
  return fixturePairRecipe({
    name: 'r',
    dir,
    trainer: { maxSteps: over.maxSteps ?? 3, globalBatchSize: 2, microBatchSize: 2, saveInterval: over.saveInterval ?? 1, valCheckInterval: 0, logInterval: 1 },
    optim: { lr: over.lr ?? 1e-3 },
    loss: { kind: over.kind ?? 'forward_kl' },
  });
}

test('a finished run, run again, says it is finished and returns its last step; nothing is trained', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-finished-'));
  try {
    const first = await run(recipe(dir), { log: null });
    assert.equal(first.steps.length, 3);
    const lines: string[] = [];
    const again = await run(recipe(dir), { log: (l) => lines.push(l) });
    assert.equal(again.alreadyFinished, true);
    assert.equal(again.stoppedEarly, false);
    assert.deepEqual(again.steps, []);
    assert.equal(again.resumedFromStep, 3);
    assert.equal(again.lastStep?.step, 2);
    assert.equal(again.lastStep?.loss, first.steps[2].loss);
    const said = lines.join('\n');
    assert.match(
      said,
      /is finished: 3 of --max_steps 3 steps done \(last loss \d+\.\d{4}\); the student is in .+student\. Raise --max_steps to train on, or use another --name\./,
    );
    assert.doesNotMatch(said, /resuming/);
    // Killed between its last checkpoint and the final save: the finished run saves the student now.
    const saved = readFileSync(join(first.studentDir, 'model.safetensors'));
    rmSync(first.studentDir, { recursive: true });
    const third = await run(recipe(dir), { log: null });
    assert.equal(third.alreadyFinished, true);
    assert.ok(readFileSync(join(third.studentDir, 'model.safetensors')).equals(saved), "the final student is the last checkpoint's");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a resume names what changed in the recipe and what it does; an unchanged one says nothing more', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'resume-changed-'));
  try {
    await run(recipe(dir, { maxSteps: 4 }), { log: null, stopAfterSteps: 2 });
    const same: string[] = [];
    await run(recipe(dir, { maxSteps: 4, saveInterval: 3 }), { log: (l) => same.push(l), stopAfterSteps: 1 });
    assert.ok(
      same.some((l) => l.startsWith('resuming ')),
      same.join('\n'),
    );
    assert.ok(!same.some((l) => l.startsWith('resume: ')), `--save_interval does not change the training: ${same.join('\n')}`);

    const lines: string[] = [];
    const changed = recipe(dir, { maxSteps: 6, lr: 2e-3, kind: 'reverse_kl' });
    const r = await run(changed, { log: (l) => lines.push(l) });
    assert.equal(r.resumedFromStep, 3);
    const was = learningRate(recipe(dir, { maxSteps: 4 }))(3).toExponential(2);
    const now = learningRate(changed)(3).toExponential(2);
    assert.ok(
      lines.includes(
        `resume: the learning-rate schedule changed (--max_steps 4 → 6, --lr 0.001 → 0.002): step 4 runs at lr ${now} where the checkpoint's schedule gives ${was}`,
      ),
      lines.join('\n'),
    );
    assert.ok(
      lines.includes('resume: the loss changed (--kd_loss forward_kl → reverse_kl): the losses logged from step 4 on do not compare with those before'),
      lines.join('\n'),
    );
    assert.equal(r.steps[0].lr, learningRate(changed)(3), 'the new schedule is the one used');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('describeResumeChanges: one line per kind of change; logging and layout settings are not changes', () => {
  const base = recipe('runs');
  const other = recipe('elsewhere', { saveInterval: 7 });
  other.trainer.logInterval = 5;
  other.trainer.inFlight = 9;
  other.parallel.devicesPerNode = 2;
  other.backend = 'wasm';
  other.loss.chunkSize = 64;
  assert.deepEqual(describeResumeChanges(base, other, 2), []);
  const changed = recipe('runs');
  changed.optim.clipGrad = 0.5;
  changed.optim.weightDecay = 0;
  changed.loss.kdRatio = 0.5;
  changed.trainer.precision = 'bf16-mixed';
  assert.deepEqual(describeResumeChanges(base, changed, 2), [
    'the optimizer changed (--weight_decay 0.01 → 0, --clip_grad 1 → 0.5): AdamW continues from the saved moments with the new settings',
    'the loss changed (--kd_ratio 1 → 0.5): the losses logged from step 3 on do not compare with those before',
    'the matmul precision changed (--precision 32 → bf16-mixed): the numerics change from step 3 on',
  ]);
});
