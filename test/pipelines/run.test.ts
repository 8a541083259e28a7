/**
 * run(recipe) end to end on the fixture pair and a real Megatron dataset: resume continues exactly as if never
 * stopped, another run's checkpoint is refused, an abort stops cleanly after writing a checkpoint, and the
 * student comes out in the Hugging Face layout.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { listCheckpoints, ResumeRefusedError } from '../../src/train/trainingCheckpoint.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { readMetrics } from '../../src/logging/metricsLog.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

function recipe(dir: string, name: string, over: Partial<DistillationRecipe['trainer']> = {}, teacher = 'llama-teacher'): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    teacherPath: fixture(teacher),
    trainer: { maxSteps: 6, globalBatchSize: 2, microBatchSize: 1, saveInterval: 2, valCheckInterval: 3, limitValBatches: 2, logInterval: 1, ...over },
  });
}

const weights = (dir: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(dir, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

test('a run stopped after 3 of 6 steps and resumed ends with the same weights as an uninterrupted run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-run-'));
  try {
    const full = await run(recipe(dir, 'full'), { log: null });
    assert.equal(full.steps.length, 6);
    assert.equal(full.stoppedEarly, false);
    assert.ok(full.validations.length >= 2, 'validation ran');
    const first = await run(recipe(dir, 'split'), { log: null, stopAfterSteps: 3 });
    assert.equal(first.steps.length, 3);
    assert.equal(first.stoppedEarly, true);
    assert.deepEqual(
      listCheckpoints(join(dir, 'split')).map((c) => c.step),
      [2, 3],
    );
    const second = await run(recipe(dir, 'split'), { log: null });
    assert.equal(second.resumedFromStep, 3);
    assert.deepEqual(
      second.steps.map((s) => s.step),
      [3, 4, 5],
    );
    for (let i = 0; i < 3; i++) assert.equal(second.steps[i].loss, full.steps[i + 3].loss, `loss at step ${i + 3}`);
    const a = weights(full.studentDir);
    const b = weights(second.studentDir);
    for (const [name, w] of a) assert.ok(maxAbsDiff(w, b.get(name)!) === 0, `${name} differs`);
    // metrics.jsonl holds each step once, in order, across the stop (numbered by steps done, 1..N: src/logging/runRecords.ts).
    const steps = readMetrics(join(dir, 'split'))
      .filter((r) => r.split !== 'valid')
      .map((r) => r.step);
    assert.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
    // The student is a Hugging Face checkpoint and nothing of the teacher is saved.
    const config = JSON.parse(readFileSync(join(second.studentDir, 'config.json'), 'utf8')) as { hidden_size: number };
    assert.equal(config.hidden_size, 32);
    assert.ok(existsSync(join(dir, 'split', 'tb_logs')));
    assert.ok(existsSync(join(dir, 'split', 'report.html')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a log_dir holding another run (different teacher) is refused, naming what differs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-run-'));
  try {
    await run(recipe(dir, 'r', { maxSteps: 2, saveInterval: 1 }), { log: null, stopAfterSteps: 1 });
    await assert.rejects(run(recipe(dir, 'r', { maxSteps: 2, saveInterval: 1 }, 'gpt2-tiny'), { log: null }), (e: unknown) => {
      assert.ok(e instanceof ResumeRefusedError);
      assert.match((e as Error).message, /teacher differs/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an abort stops after the current step and writes its checkpoint', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-run-'));
  try {
    const ac = new AbortController();
    let seen = 0;
    const r = await run(recipe(dir, 'a', { maxSteps: 50, saveInterval: 100, valCheckInterval: 0 }), {
      log: null,
      signal: ac.signal,
      onStep: () => {
        if (++seen === 2) ac.abort();
      },
    });
    assert.equal(r.stoppedEarly, true);
    const ckpts = listCheckpoints(join(dir, 'a'));
    assert.equal(ckpts.length, 1);
    assert.equal(ckpts[0].step, r.steps.length, 'the checkpoint holds every completed step');
    assert.ok(r.steps.length >= 2 && r.steps.length < 50);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
