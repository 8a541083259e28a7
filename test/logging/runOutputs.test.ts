/**
 * What a run writes, read as a user reads it (issue 23, item 8): one step numbering everywhere (metrics.jsonl, the
 * console, checkpoint names: steps 1..N), names that say what each number is (training `loss` / `kd_loss` /
 * `ce_loss`, validation `val_ce_loss` / `val_kd_loss` / `val_ppl`), validation shown on the console, the report's
 * table counting the steps done, and a resumed run logging each step once under the same numbers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, fixture } from '../helpers/fixtures.ts';
import { pretrainRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { readMetrics } from '../../src/logging/metricsLog.ts';

const data = fixture('megatron', 'small_text_document');

test('distill run: metrics.jsonl, console, checkpoints and report number steps 1..N and name each figure', () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-outputs-'));
  try {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        join(ROOT, 'src/cli/main.ts'),
        'run',
        '--name',
        'demo',
        '--log_dir',
        dir,
        '--student_path',
        fixture('llama-student'),
        '--teacher_path',
        fixture('llama-teacher'),
        '--data_paths',
        data,
        '--seq_length',
        '16',
        '--split',
        '80,20,0',
        '--max_steps',
        '4',
        '--gbs',
        '2',
        '--mbs',
        '2',
        '--lr',
        '1e-3',
        '--warmup_steps',
        '1',
        '--kd_ratio',
        '0.5',
        '--val_check_interval',
        '2',
        '--limit_val_batches',
        '2',
        '--save_interval',
        '2',
        '--backend',
        'wasm',
      ],
      { encoding: 'utf8', cwd: ROOT, env: { ...process.env, DISTILL_NO_PROGRESS: '1' } },
    );
    assert.equal(r.status, 0, r.stderr);
    const runDir = join(dir, 'demo');
    const lines = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const train = lines.filter((l) => l.split !== 'valid');
    const valid = lines.filter((l) => l.split === 'valid');

    // Steps 1..N, as the console's "N/4" and the checkpoints' names count them.
    assert.deepEqual(
      train.map((l) => l.step),
      [1, 2, 3, 4],
    );
    assert.deepEqual(
      valid.map((l) => l.step),
      [2, 4],
    );
    assert.deepEqual(readdirSync(join(runDir, 'checkpoints')).sort(), ['step-000002', 'step-000004']);
    assert.equal(JSON.parse(r.stdout.trim().split('\n').pop()!).steps, 4);

    // Training rows: the objective and both of its terms (kd_ratio 0.5 computes CE), (1 − α)·CE + α·KD = loss.
    for (const l of train) {
      assert.deepEqual(Object.keys(l).sort(), ['ce_loss', 'grad_norm', 'kd_loss', 'loss', 'lr', 'step', 'time', 'tokens_per_s']);
      const [loss, kd, ce] = [l.loss, l.kd_loss, l.ce_loss] as number[];
      assert.ok(Math.abs(0.5 * ce + 0.5 * kd - loss) < 1e-4 * loss, `step ${l.step}: loss ${loss} vs 0.5·${ce} + 0.5·${kd}`);
    }
    // Validation rows say they are validation figures: the student's CE, its perplexity, the KD to the teacher.
    for (const l of valid) {
      assert.deepEqual(Object.keys(l).sort(), ['split', 'step', 'time', 'val_ce_loss', 'val_kd_loss', 'val_ppl']);
      assert.ok(Math.abs((l.val_ppl as number) - Math.exp(l.val_ce_loss as number)) < 1e-9);
    }

    // Validation appears on the console, with the same figures and step numbers as metrics.jsonl.
    for (const l of valid) {
      const want = `validation after step ${l.step}/4 | val_ce_loss ${(l.val_ce_loss as number).toFixed(4)} (ppl ${(l.val_ppl as number).toFixed(1)}) | val_kd_loss ${(l.val_kd_loss as number).toFixed(4)} | 64 tokens`;
      assert.ok(r.stderr.includes(want), `console lacks "${want}":\n${r.stderr}`);
    }

    // The report's table counts the steps done and names the best validation CE's step.
    const html = readFileSync(join(runDir, 'report.html'), 'utf8');
    assert.match(html, /<tr><td>student<\/td><td>4<\/td>/);
    const best = valid.reduce((a, b) => ((b.val_ce_loss as number) < (a.val_ce_loss as number) ? b : a));
    assert.match(html, new RegExp(`@ ${best.step}</td>`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a resumed run logs each step once under the same numbers (records after the checkpoint are dropped)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-outputs-resume-'));
  try {
    const recipe = pretrainRecipe({
      name: 'ce',
      dir,
      studentPath: fixture('llama-student'),
      backend: 'cpu',
      data: { dataPaths: data, seqLength: 16, split: '80,20,0', seed: 7 },
      trainer: { maxSteps: 5, globalBatchSize: 2, microBatchSize: 2, saveInterval: 2, valCheckInterval: 2, limitValBatches: 1, logInterval: 1 },
      optim: { lr: 1e-3, minLr: 1e-4, warmupSteps: 1 },
    });
    // Three steps and their checkpoint; then a record of step 4 as a run killed after logging it but before its
    // checkpoint would leave: the resumed run drops it and logs step 4 once.
    const first = await run(recipe, { log: null, stopAfterSteps: 3 });
    assert.equal(first.steps.length, 3);
    appendFileSync(join(dir, 'ce', 'metrics.jsonl'), JSON.stringify({ step: 4, loss: 99 }) + '\n');
    const logged: string[] = [];
    const second = await run(recipe, { log: (l) => logged.push(l) });
    assert.equal(second.resumedFromStep, 3);
    const recs = readMetrics(join(dir, 'ce'));
    assert.deepEqual(
      recs.filter((x) => x.split !== 'valid').map((x) => x.step),
      [1, 2, 3, 4, 5],
    );
    // Validation every 2 steps and at the end of each invocation (after step 3, where the first one stopped).
    assert.deepEqual(
      recs.filter((x) => x.split === 'valid').map((x) => x.step),
      [2, 3, 4, 5],
    );
    // Pretraining computes the CE and no KD: the rows say so by the fields they hold.
    for (const x of recs.filter((y) => y.split !== 'valid')) assert.ok('ce_loss' in x && !('kd_loss' in x) && x.loss !== 99, JSON.stringify(x));
    assert.deepEqual(
      logged.filter((l) => l.startsWith('validation after step')).map((l) => l.split(' |')[0]),
      ['validation after step 4/5', 'validation after step 5/5'],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
