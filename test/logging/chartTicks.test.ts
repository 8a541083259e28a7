/**
 * Axis ticks a reader can tell apart (issue 23, item 8): on a nearly flat validation curve (the README run's
 * 6.9078 → 6.9077) every y tick has its own label, not four times "6.91e0"; step axes tick at integers only, never
 * at 2.5 or 7.5; learning rates read as 2e-4, throughput as 12k; and the report's table counts the steps done.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutChart, niceTicks, tickLabels, type ChartSpec } from '../../src/logging/chart.ts';
import { runCharts, summarizeRun } from '../../src/logging/runCharts.ts';
import { buildReportHtml } from '../../src/logging/report.ts';
import type { MetricsRecord } from '../../src/logging/metricsLog.ts';

const TEXT = { charW: 7, lineH: 14 };

function spec(points: { x: number; y: number }[], integerX = true): ChartSpec {
  return { title: 't', xLabel: 'step', yLabel: 'y', integerX, series: [{ label: 's', color: '#000000', points }] };
}

test('a nearly flat curve gets distinct y labels with the digits its range needs', () => {
  const L = layoutChart(
    spec([
      { x: 10, y: 6.90781 },
      { x: 20, y: 6.90774 },
    ]),
    760,
    360,
    TEXT,
  );
  const labels = L.yTicks.map((t) => t.label);
  assert.ok(labels.length >= 2, labels.join(' '));
  assert.equal(new Set(labels).size, labels.length, `duplicate labels: ${labels.join(' ')}`);
  assert.ok(
    labels.every((l) => /^6\.9077\d*$|^6\.9078\d*$|^6\.9076\d*$|^6\.9079\d*$/.test(l)),
    labels.join(' '),
  );
  // Each label reads back as its tick's value to within half a tick step.
  const step = L.yTicks[1].value - L.yTicks[0].value;
  for (const t of L.yTicks) assert.ok(Math.abs(Number(t.label) - t.value) <= step / 2, `${t.label} for ${t.value}`);
});

test('step axes tick at integers only; a generic axis may use 2.5', () => {
  for (const [min, max] of [
    [1, 10],
    [0, 9],
    [1, 20],
    [10, 20],
    [1, 3],
    [1, 1000],
    [5, 5],
  ]) {
    const ticks = niceTicks(min, max, 8, true);
    assert.ok(ticks.length >= 2, `${min}..${max}: ${ticks.join(',')}`);
    assert.ok(ticks.every(Number.isInteger), `${min}..${max}: ${ticks.join(',')}`);
  }
  assert.ok(niceTicks(0, 10, 4).includes(2.5), 'a generic axis keeps 2.5 steps');
  const L = layoutChart(
    spec([
      { x: 1, y: 1 },
      { x: 10, y: 2 },
    ]),
    760,
    360,
    TEXT,
  );
  assert.ok(L.xTicks.length >= 3, L.xTicks.map((t) => t.label).join(' '));
  assert.ok(
    L.xTicks.every((t) => Number.isInteger(t.value) && /^\d+$/.test(t.label)),
    L.xTicks.map((t) => t.label).join(' '),
  );
  // Every chart of a run is a step axis.
  const charts = runCharts([
    {
      label: 'r',
      records: [
        { step: 1, loss: 2, lr: 1e-4 },
        { step: 10, loss: 1, lr: 2e-4 },
      ],
    },
  ]);
  assert.ok(charts.length > 0 && charts.every((c) => c.integerX === true));
});

test('one format per axis: scientific for learning rates, k for throughput, fixed decimals otherwise', () => {
  assert.deepEqual(tickLabels([0, 2e-4, 4e-4, 6e-4]), ['0', '2e-4', '4e-4', '6e-4']);
  assert.deepEqual(tickLabels([1e-4, 1.05e-4, 1.1e-4]), ['1.00e-4', '1.05e-4', '1.10e-4']);
  assert.deepEqual(tickLabels([10000, 12000, 14000]), ['10k', '12k', '14k']);
  assert.deepEqual(tickLabels([0, 0.5, 1, 1.5]), ['0', '0.5', '1.0', '1.5']);
  assert.deepEqual(tickLabels([6.9076, 6.9078, 6.908]), ['6.9076', '6.9078', '6.9080']);
  assert.deepEqual(tickLabels([0, 2.5, 5, 7.5]), ['0', '2.5', '5.0', '7.5']);
});

test('the report counts steps done: "20" for a 20-step run; its best validation CE names its step', () => {
  const records: MetricsRecord[] = [];
  for (let step = 1; step <= 20; step++) {
    records.push({ step, loss: 1 / step });
    if (step % 10 === 0) records.push({ split: 'valid', step, val_ce_loss: 7 - step / 100 });
  }
  const s = summarizeRun({ label: 'student', records });
  assert.equal(s.steps, 20);
  assert.equal(s.bestValidLoss, 6.8);
  assert.equal(s.bestValidStep, 20);
  const html = buildReportHtml([{ label: 'student', records }]);
  assert.match(html, /<tr><td>student<\/td><td>20<\/td><td>0\.05000<\/td><td>6\.800 @ 20<\/td>/);
  assert.match(html, /<th>best validation CE @ step<\/th>/);
});
