/**
 * metrics.jsonl: appends one JSON object per line, reads back (NaN survives as NaN), truncates after a
 * resume step so that a resumed run does not repeat steps, and tolerates a line torn by a crash.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { METRICS_FILE, MetricsLog, readMetrics, truncateMetricsAfter, type MetricsRecord, type TrainRecord } from '../../src/logging/metricsLog.ts';

function tmp(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'metrics-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function logSteps(log: MetricsLog, from: number, to: number, validEvery = 5): void {
  for (let step = from; step <= to; step++) {
    log.append({ step, loss: 10 / step, kd_loss: 6 / step, ce_loss: 4 / step, grad_norm: 1, lr: 1e-3, tokens_per_s: 1000 + step });
    if (step % validEvery === 0) log.append({ split: 'valid', step, val_ce_loss: 11 / step });
  }
}

test('appends one JSON object per line and reads them back', (t) => {
  const dir = tmp(t);
  const log = MetricsLog.open(dir, { now: () => 1_000_000 });
  logSteps(log, 1, 10);
  log.append({ step: 11, loss: NaN });
  log.close();

  const lines = readFileSync(join(dir, METRICS_FILE), 'utf8').trimEnd().split('\n');
  assert.equal(lines.length, 13);
  assert.deepEqual(JSON.parse(lines[0]), { step: 1, loss: 10, kd_loss: 6, ce_loss: 4, grad_norm: 1, lr: 1e-3, tokens_per_s: 1001, time: 1000 });
  assert.deepEqual(JSON.parse(lines[5]), { split: 'valid', step: 5, val_ce_loss: 2.2, time: 1000 });

  const recs = readMetrics(dir);
  assert.equal(recs.length, 13);
  assert.ok(Number.isNaN((recs[12] as TrainRecord).loss), 'NaN is written as null and read back as NaN');
  assert.deepEqual(readMetrics(join(dir, METRICS_FILE)), recs, 'a file path works as well as the run dir');
});

test('steps must increase per split; train and valid may share a step', (t) => {
  const dir = tmp(t);
  const log = MetricsLog.open(dir);
  log.append({ step: 5, loss: 1 });
  log.append({ split: 'valid', step: 5, val_ce_loss: 1.1 });
  assert.throws(() => log.append({ step: 5, loss: 0.9 }), /step 5 is not after the last logged step 5/);
  assert.throws(() => log.append({ step: 1.5, loss: 0.9 }), /non-negative integer/);
  log.close();
});

test('resume truncates records after the checkpoint step, so no step is logged twice', (t) => {
  const dir = tmp(t);
  const first = MetricsLog.open(dir);
  logSteps(first, 1, 17); // crashed at step 17; the last checkpoint was at step 10
  first.close();

  // Without truncation, the resumed run's first append fails rather than duplicating step 11.
  const careless = MetricsLog.open(dir);
  assert.equal(careless.lastStepOf('train'), 17);
  assert.throws(() => careless.append({ step: 11, loss: 1 }), /not after/);
  careless.close();

  const resumed = MetricsLog.open(dir, { resumeAfterStep: 10 });
  assert.equal(resumed.lastStepOf('train'), 10);
  assert.equal(resumed.lastStepOf('valid'), 10);
  logSteps(resumed, 11, 20);
  resumed.close();

  const recs = readMetrics(dir);
  const train = recs.filter((r) => r.split !== 'valid').map((r) => r.step);
  const valid = recs.filter((r) => r.split === 'valid').map((r) => r.step);
  assert.deepEqual(
    train,
    Array.from({ length: 20 }, (_, i) => i + 1),
  );
  assert.deepEqual(valid, [5, 10, 15, 20]);
});

test('truncateMetricsAfter drops a torn last line and reports what it removed', (t) => {
  const dir = tmp(t);
  const path = join(dir, METRICS_FILE);
  const log = MetricsLog.open(dir);
  logSteps(log, 1, 6);
  log.close();
  appendFileSync(path, '{"step":7,"loss":1.2'); // a crash mid-write

  assert.equal(readMetrics(dir).length, 7, 'the reader ignores the torn line');
  assert.equal(truncateMetricsAfter(path, 4), 3, 'steps 5, 5 (valid) and 6 removed');
  assert.ok(readFileSync(path, 'utf8').endsWith('\n'));
  assert.deepEqual(
    readMetrics(dir).map((r: MetricsRecord) => r.step),
    [1, 2, 3, 4],
  );
  assert.equal(truncateMetricsAfter(path, 100), 0);
  assert.equal(truncateMetricsAfter(join(dir, 'missing.jsonl'), 3), 0, 'nothing to resume is not an error');

  // Reopening without a resume step also cuts a torn tail, so the next line starts on its own line.
  appendFileSync(path, '{"step":5,"lo');
  const again = MetricsLog.open(dir);
  again.append({ step: 5, loss: 0.5 });
  again.close();
  assert.deepEqual(
    readMetrics(dir).map((r) => r.step),
    [1, 2, 3, 4, 5],
  );
});

test('fsyncs every N records or after the interval', (t) => {
  const dir = tmp(t);
  let clock = 0;
  const log = MetricsLog.open(dir, { fsyncEvery: 3, fsyncIntervalMs: 1000, now: () => clock });
  const pending = (): number => (log as unknown as { unsynced: number }).unsynced;
  log.append({ step: 1, loss: 1 });
  log.append({ step: 2, loss: 1 });
  assert.equal(pending(), 2);
  log.append({ step: 3, loss: 1 });
  assert.equal(pending(), 0, 'synced after 3 records');
  log.append({ step: 4, loss: 1 });
  clock = 1500;
  log.append({ step: 5, loss: 1 });
  assert.equal(pending(), 0, 'synced after the interval');
  log.close();
  assert.throws(() => log.append({ step: 6, loss: 1 }), /closed/);
});

test('malformed lines are reported with file and line number', (t) => {
  const dir = tmp(t);
  appendFileSync(join(dir, METRICS_FILE), '{"step":1,"loss":2}\nnot json\n');
  assert.throws(() => readMetrics(dir), /metrics\.jsonl: line 2 is not JSON/);
});

test('a file written before the val_ names reads under them: validation loss was the student CE', (t) => {
  const dir = tmp(t);
  writeFileSync(
    join(dir, METRICS_FILE),
    [
      JSON.stringify({ step: 9, loss: 0.02, kd_loss: 0.02, grad_norm: 1 }),
      JSON.stringify({ split: 'valid', step: 9, loss: 6.9, kd_loss: 0.01, ce_loss: 6.9, ppl: 992.3 }),
    ].join('\n') + '\n',
  );
  const [train, valid] = readMetrics(dir);
  assert.deepEqual(train, { step: 9, loss: 0.02, kd_loss: 0.02, grad_norm: 1 }, 'training rows keep their names');
  assert.deepEqual(valid, { split: 'valid', step: 9, val_ce_loss: 6.9, val_kd_loss: 0.01, val_ppl: 992.3 });
});
