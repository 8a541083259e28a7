/**
 * `distill run` with --tp_size/--pp_size through real worker processes: the same losses and student as one
 * worker, a checkpoint written under one layout resumed under another, a teacher and student whose vocabularies
 * pad to different sizes (Qwen-style) under TP 2, and impossible layouts refused with the arithmetic before any
 * worker starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { ConfigError } from '../../src/errors.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';
import { llamaWithVocab } from './llamaWithVocab.ts';

function recipe(dir: string, name: string, parallel: Partial<DistillationRecipe['parallel']>): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    trainer: { maxSteps: 4, globalBatchSize: 4, microBatchSize: 1, saveInterval: 2, valCheckInterval: 2, limitValBatches: 2, logInterval: 1 },
    parallel: { devicesPerNode: 1, numNodes: 1, tpSize: 1, ppSize: 1, cpSize: 1, ...parallel },
  });
}

const weights = (dir: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(dir, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

interface RunLike {
  steps: { loss: number }[];
  validations: { step: number; studentCe: number; kdLoss?: number }[];
  studentDir: string;
}

function assertSameRun(got: RunLike, want: RunLike, what: string): void {
  assert.equal(got.steps.length, want.steps.length, `${what}: step count`);
  assert.equal(got.validations.length, want.validations.length, `${what}: validations`);
  got.validations.forEach((v, i) => {
    const w = want.validations[i];
    assert.equal(v.step, w.step);
    for (const k of ['studentCe', 'kdLoss'] as const) {
      const rel = Math.abs(v[k]! - w[k]!) / w[k]!;
      assert.ok(rel <= 1e-5, `${what} validation at step ${v.step}: ${k} ${v[k]} vs one worker ${w[k]} (rel ${rel.toExponential(2)})`);
    }
  });
  got.steps.forEach((s, i) => {
    const rel = Math.abs(s.loss - want.steps[i].loss) / want.steps[i].loss;
    assert.ok(rel <= 1e-5, `${what} step ${i}: loss ${s.loss} vs one worker ${want.steps[i].loss} (rel ${rel.toExponential(2)})`);
  });
  const a = weights(got.studentDir);
  const b = weights(want.studentDir);
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: the saved student has the single worker's tensors`);
  for (const [name, w] of b) {
    const d = maxAbsDiff(a.get(name)!, w);
    assert.ok(d <= 1e-4, `${what}: ${name} differs by ${d}`);
  }
}

test('distill run under TP 2 and under PP 2 (worker processes) matches one worker; a PP 2 checkpoint resumes under TP 2', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-run-'));
  try {
    const one = await run(recipe(dir, 'one', {}), { log: null, progress: false });
    const tp = await run(recipe(dir, 'tp2', { devicesPerNode: 2, tpSize: 2 }), { log: null, progress: false });
    assertSameRun(tp, one, 'TP 2');
    // Two steps under PP 2, then the rest under TP 2 from PP 2's checkpoint (full Hugging Face tensors).
    const first = await run(recipe(dir, 'switch', { devicesPerNode: 2, ppSize: 2 }), { log: null, progress: false, stopAfterSteps: 2 });
    assert.equal(first.steps.length, 2);
    const second = await run(recipe(dir, 'switch', { devicesPerNode: 2, tpSize: 2 }), { log: null, progress: false });
    assert.equal(second.resumedFromStep, 2);
    assertSameRun(
      { steps: [...first.steps, ...second.steps], validations: [...first.validations, ...second.validations], studentDir: second.studentDir },
      one,
      'PP 2 then TP 2',
    );
    // The student loads on one worker as an ordinary checkpoint.
    await selectBackend('cpu', { log: null });
    const loaded = await loadModel(second.studentDir, { trainable: false });
    assert.equal(loaded.config.numLayers, 1);
    loaded.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a Qwen-style pair (student 1,000 ids, teacher 1,024: its last 24 rows random) under TP 2 matches one worker and says the same of the vocabularies', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-qwen-'));
  try {
    // Padded under TP 2 (128 × 2): the student to 1,024 rows (24 zero), the teacher not at all; the KD reads ids [0, 1000).
    const pair = { studentPath: llamaWithVocab('llama-student', 1000, 3), teacherPath: llamaWithVocab('llama-teacher', 1024, 4) };
    const qwen = (name: string, parallel: Partial<DistillationRecipe['parallel']>): DistillationRecipe => ({
      ...recipe(dir, name, parallel),
      ...pair,
      loss: { ...recipe(dir, name, parallel).loss, kdRatio: 0.5 },
    });
    const oneLog: string[] = [];
    const tpLog: string[] = [];
    const one = await run(qwen('one', {}), { log: (l) => oneLog.push(l), progress: false });
    const tp = await run(qwen('tp2', { devicesPerNode: 2, tpSize: 2 }), { log: (l) => tpLog.push(l), progress: false });
    assertSameRun(tp, one, 'TP 2, student 1000 ← teacher 1024');
    const vocabLines = (lines: string[]): string[] => lines.filter((l) => /vocabulary/.test(l));
    assert.deepEqual(vocabLines(oneLog), ['vocabulary: teacher 1024 ids, student 1000; the loss uses the 1000 shared ids (the rest is padding)']);
    assert.deepEqual(
      vocabLines(tpLog).map((l) => l.replace(/^\[[^\]]*\] */, '')),
      vocabLines(oneLog),
      'TP 2 logs what one worker logs, once',
    );
    assert.equal(
      readAllSafetensors(join(tp.studentDir, 'model.safetensors')).get('model.embed_tokens.weight')!.shape[0],
      1000,
      'the saved student keeps its own 1,000 rows',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('layouts the models cannot take are refused before any worker starts, with the arithmetic', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-refuse-'));
  try {
    // The student has 2 heads and 1 KV head: 2 heads do not split over 4 ranks.
    await assert.rejects(
      run(recipe(dir, 'tp4', { devicesPerNode: 4, tpSize: 4 }), { log: null }),
      (e: Error) => e instanceof ConfigError && /2 attention heads do not split over --tp_size 4 \(2 mod 4 = 2\)/.test(e.message),
    );
    // One layer: at most two stages.
    await assert.rejects(
      run(recipe(dir, 'pp3', { devicesPerNode: 3, ppSize: 3 }), { log: null }),
      (e: Error) => e instanceof ConfigError && /--pp_size 3 stages need at least 2 transformer layers .* it has 1/.test(e.message),
    );
    await assert.rejects(
      run(recipe(dir, 'odd', { devicesPerNode: 3, tpSize: 2 }), { log: null }),
      (e: Error) => e instanceof ConfigError && /3 workers is not a multiple of tp × pp × cp = 2 × 1 × 1 = 2/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an abort under TP 2 stops both workers after an agreed step, writes a checkpoint, and the run resumes to the same student', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-abort-'));
  try {
    const one = await run(recipe(dir, 'one', {}), { log: null, progress: false });
    const ac = new AbortController();
    const first = await run(recipe(dir, 'abort', { devicesPerNode: 2, tpSize: 2 }), {
      log: null,
      progress: false,
      signal: ac.signal,
      onStep: (r) => {
        if (r.step === 0) ac.abort();
      },
    });
    assert.ok(first.stoppedEarly, 'the run reports that it stopped early');
    assert.ok(first.steps.length >= 1 && first.steps.length < 4, `stopped after ${first.steps.length} steps`);
    const second = await run(recipe(dir, 'abort', { devicesPerNode: 2, tpSize: 2 }), { log: null, progress: false });
    assert.equal(second.resumedFromStep, first.steps.length, 'resumes from the step after the last one taken');
    assertSameRun(
      { steps: [...first.steps, ...second.steps], validations: [...first.validations, ...second.validations], studentDir: second.studentDir },
      one,
      'aborted and resumed',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pretraining (CE only, no teacher) under TP 2 × PP 2 matches one worker', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-pretrain-'));
  try {
    const base = (name: string, parallel: Partial<DistillationRecipe['parallel']>): DistillationRecipe => ({
      ...recipe(dir, name, parallel),
      kind: 'pretrain',
      teacherPath: undefined,
      studentPath: fixture('llama-teacher'),
    });
    const one = await run(base('one', {}), { log: null, progress: false });
    const mp = await run(base('tp2pp2', { devicesPerNode: 4, tpSize: 2, ppSize: 2 }), { log: null, progress: false });
    assert.ok(one.validations.length > 0 && one.validations.every((v) => v.kdLoss === undefined));
    for (const v of mp.validations) assert.equal(v.kdLoss, undefined);
    mp.validations.forEach((v, i) => assert.ok(Math.abs(v.studentCe - one.validations[i].studentCe) / one.validations[i].studentCe <= 1e-5));
    assertSameRun({ ...mp, validations: [] }, { ...one, validations: [] }, 'pretraining under TP 2 × PP 2');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--recompute_granularity under TP says that the layout recomputes every op already, and trains', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mp-recompute-'));
  try {
    const lines: string[] = [];
    const base = recipe(dir, 'recompute', { devicesPerNode: 2, tpSize: 2 });
    const r = await run({ ...base, trainer: { ...base.trainer, maxSteps: 1, recomputeGranularity: 'full' } }, { log: (l) => lines.push(l), progress: false });
    assert.equal(r.steps.length, 1);
    assert.ok(
      lines.some((l) => /--recompute_granularity full: the tp\/pp\/cp layouts already run every op of the forward again in the backward/.test(l)),
      lines.join('\n'),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
