/**
 * run(recipe) on worker processes against one process on the fixture pair: DP 2 (gbs 2, mbs 1) and the teacher
 * on its own worker give the losses and final weights of a single worker; a worker killed with SIGKILL stops the
 * run with an error naming it, leaves only complete checkpoints, and the same call resumes and finishes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run, type RunResult } from '../../pipelines/run.ts';
import { WorkerDiedError, type WorkerInfo } from '../../src/runtime/launcher.ts';
import { withTeacherDevices } from '../../src/parallel/placement.ts';
import { checkpointsDir, listCheckpoints } from '../../src/train/trainingCheckpoint.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { readMetrics } from '../../src/logging/metricsLog.ts';
import { maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

const STEPS = 6;

function recipe(dir: string, name: string, devices: number, over: Partial<DistillationRecipe['trainer']> = {}): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    trainer: { maxSteps: STEPS, globalBatchSize: 2, microBatchSize: 1, saveInterval: 2, valCheckInterval: 3, limitValBatches: 2, logInterval: 1, ...over },
    parallel: { devicesPerNode: devices },
  });
}

const weights = (dir: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(dir, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

function assertSameRun(got: RunResult, want: RunResult, what: string): void {
  assert.deepEqual(
    got.steps.map((s) => s.step),
    want.steps.map((s) => s.step),
    `${what}: steps`,
  );
  for (let i = 0; i < want.steps.length; i++) {
    const [g, w] = [got.steps[i], want.steps[i]];
    assert.ok(Math.abs(g.loss - w.loss) <= 1e-5, `${what}: loss at step ${w.step}: ${g.loss} vs ${w.loss}`);
    assert.ok(Math.abs(g.kdLoss! - w.kdLoss!) <= 1e-5, `${what}: kd loss at step ${w.step}: ${g.kdLoss} vs ${w.kdLoss}`);
    assert.ok(Math.abs(g.gradNorm - w.gradNorm) <= 1e-5, `${what}: grad norm at step ${w.step}`);
    assert.equal(g.tokens, w.tokens, `${what}: tokens at step ${w.step}`);
  }
  const a = weights(want.studentDir);
  const b = weights(got.studentDir);
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [name, w] of a) assert.ok(maxAbsDiff(w, b.get(name)!) <= 1e-5, `${what}: ${name} differs by ${maxAbsDiff(w, b.get(name)!)}`);
}

const dir = mkdtempSync(join(tmpdir(), 'distill-dp-'));
let single: RunResult;

test('--devices 2 (DP 2, gbs 2, mbs 1) gives the losses and final weights of --devices 1', async () => {
  single = await run(recipe(dir, 'single', 1), { log: null });
  const dp2 = await run(recipe(dir, 'dp2', 2), { log: null });
  assert.equal(dp2.stoppedEarly, false);
  assertSameRun(dp2, single, 'DP 2');
  // Only rank 0 wrote: each step once in metrics.jsonl, validation ran on rank 0, checkpoints are rank 0's.
  const m = readMetrics(join(dir, 'dp2'));
  // Numbered by steps done, 1..N (src/logging/runRecords.ts).
  assert.deepEqual(
    m.filter((r) => r.split !== 'valid').map((r) => r.step),
    [1, 2, 3, 4, 5, 6],
  );
  assert.equal(m.filter((r) => r.split === 'valid').length, single.validations.length);
  assert.deepEqual(
    listCheckpoints(join(dir, 'dp2')).map((c) => c.step),
    [4, 6],
  );
});

test('the teacher on a worker of its own (--teacher_devices 1) gives the same result as the teacher in the student worker', async () => {
  const placed = await run(withTeacherDevices(recipe(dir, 'teacher1', 1), 1), { log: null });
  assertSameRun(placed, single, 'teacher worker, DP 1');
  const both = await run(withTeacherDevices(recipe(dir, 'teacher1dp2', 2), 1), { log: null });
  assertSameRun(both, single, 'teacher worker serving DP 2');
});

test('SIGKILL of one worker stops the run naming it; only complete checkpoints remain; the same call resumes and finishes', async () => {
  const r = recipe(dir, 'killed', 2, { saveInterval: 1 });
  let workers: WorkerInfo[] = [];
  let killed = false;
  await assert.rejects(
    // run() launches the workers (devices 2), handing onWorkers to the launcher.
    run(r, {
      log: null,
      onWorkers: (w) => {
        workers = w;
      },
      onStep: (s) => {
        if (s.step === 2 && !killed) {
          killed = true;
          process.kill(workers[1].pid, 'SIGKILL');
        }
      },
    }),
    (e: unknown) => {
      assert.ok(e instanceof WorkerDiedError, String(e));
      assert.match((e as Error).message, /worker 1 \(student, data-parallel rank 1 of 2, pid \d+\) was killed by SIGKILL/);
      assert.match((e as Error).message, /last message was .+/);
      assert.match((e as Error).message, /running the same command again resumes/);
      return true;
    },
  );
  const root = checkpointsDir(join(dir, 'killed'));
  const entries = readdirSync(root);
  assert.ok(entries.length > 0, 'a checkpoint was written before the kill');
  for (const name of entries) {
    assert.match(name, /^step-\d{6}$/, `only complete checkpoints remain, found ${name}`);
    for (const part of ['state.json', 'optimizer.safetensors', 'student/model.safetensors']) assert.ok(existsSync(join(root, name, part)), `${name}/${part}`);
  }
  const resumed = await run(r, { log: null });
  assert.ok(resumed.resumedFromStep >= 3 && resumed.resumedFromStep < STEPS, `resumed from ${resumed.resumedFromStep}`);
  assert.equal(resumed.stoppedEarly, false);
  assert.deepEqual(
    resumed.steps.map((s) => s.step),
    single.steps.slice(resumed.resumedFromStep).map((s) => s.step),
  );
  const want = weights(single.studentDir);
  const got = weights(resumed.studentDir);
  for (const [name, w] of want) assert.ok(maxAbsDiff(w, got.get(name)!) <= 1e-5, `${name} after resume`);
});

test('cleanup', () => rmSync(dir, { recursive: true, force: true }));
