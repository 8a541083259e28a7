/**
 * report.html: self-contained (no scripts, no external resources), one SVG path per plotted series,
 * and, in headless Chromium, the curves are really drawn: the screenshot has pixels of each run's colour.
 * In CI (CI=true) a missing Chromium is a failure; locally the browser part is skipped with a reason.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { PALETTE, TEACHER_COLOR } from '../../src/logging/chart.ts';
import { MetricsLog, type MetricsRecord } from '../../src/logging/metricsLog.ts';
import { buildReportHtml, chartSvg, writeReport, writeRunReport } from '../../src/logging/report.ts';
import { runCharts, type RunMetrics } from '../../src/logging/runCharts.ts';
import { countColor, decodePng } from './pngDecode.ts';

const CHROMIUM = '/usr/bin/chromium';

function fakeRun(kd: boolean, steps = 300): MetricsRecord[] {
  const out: MetricsRecord[] = [];
  for (let step = 1; step <= steps; step++) {
    const loss = (kd ? 3.0 : 3.4) + 6 * Math.exp(-step / 60) + 0.05 * Math.sin(step);
    const common = { step, loss, lr: 5e-4 * Math.min(1, step / 30), tokens_per_s: kd ? 9000 : 11000, grad_norm: 1 + 0.1 * Math.cos(step) };
    out.push(kd ? { ...common, kd_loss: loss * 0.7, ce_loss: loss * 0.3 } : { ...common, ce_loss: loss });
    if (step % 50 === 0) out.push({ split: 'valid', step, val_ce_loss: loss + 0.1 });
  }
  return out;
}

const RUNS: RunMetrics[] = [
  { label: 'KD student', records: fakeRun(true) },
  { label: 'CE-only student', records: fakeRun(false) },
];
const OPTS = { title: 'KD vs CE <test>', teacher: { label: 'teacher', loss: 2.8 } };

/** Paths the charts should hold: one per (chart, run with data for it). */
function expectedPathCount(): number {
  return runCharts(RUNS, OPTS).reduce((n, c) => n + c.series.length, 0);
}

test('report HTML is self-contained and has one path per series', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'report-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = writeReport(dir, RUNS, OPTS);
  assert.equal(path, join(dir, 'report.html'));
  const html = readFileSync(path, 'utf8');
  assert.doesNotMatch(html, /<script|<link|<img|<iframe|@import|url\(http|\bsrc=|\bhref=/i, 'nothing to fetch, nothing to run');
  // The only URL is the SVG namespace, which a browser never fetches.
  assert.deepEqual([...new Set(html.match(/https?:\/\/[^\s"']+/g))], ['http://www.w3.org/2000/svg']);
  assert.match(html, /KD vs CE &#60;test&#62;/, 'labels are HTML-escaped');

  const charts = runCharts(RUNS, OPTS);
  assert.deepEqual(
    charts.map((c) => c.title),
    ['Training loss', 'KD and CE loss', 'Validation CE', 'Learning rate', 'Throughput', 'Gradient norm'],
  );
  // KD chart: KD and CE of the KD run, CE of the CE-only run (which logs no kd_loss).
  assert.deepEqual(
    charts[1].series.map((s) => s.label),
    ['KD student KD', 'KD student CE', 'CE-only student CE'],
  );
  assert.equal((html.match(/<path class="series"/g) ?? []).length, expectedPathCount());
  assert.equal((html.match(/<svg /g) ?? []).length, charts.length);
  assert.equal((html.match(/class="hline"/g) ?? []).length, 1, 'teacher line (its validation CE) on the validation CE chart only');

  // A single run (no comparison, no teacher) still reports; a run without KD has no KD/CE chart from KD.
  const single = buildReportHtml([
    {
      label: 'only',
      records: [
        { step: 1, loss: 2 },
        { step: 2, loss: 1 },
      ],
    },
  ]);
  assert.equal((single.match(/<path class="series"/g) ?? []).length, 1);
  // A NaN loss breaks the line instead of being drawn at a bogus height.
  const svg = chartSvg({
    title: 't',
    xLabel: 'x',
    yLabel: 'y',
    series: [
      {
        label: 'a',
        color: '#000000',
        points: [
          { x: 0, y: 1 },
          { x: 1, y: NaN },
          { x: 2, y: 2 },
        ],
      },
    ],
  });
  assert.equal((svg.match(/<path class="series" d="([^"]*)"/)?.[1].match(/M/g) ?? []).length, 2);
});

test('writeRunReport reads metrics.jsonl of the run and of the baseline', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'report-run-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const [sub, run] of [
    ['kd', RUNS[0]],
    ['ce', RUNS[1]],
  ] as const) {
    const log = MetricsLog.open(join(dir, sub));
    for (const r of run.records) log.append(r);
    log.close();
  }
  const path = writeRunReport(join(dir, 'kd'), 'KD student', [{ label: 'CE-only student', dir: join(dir, 'ce') }], OPTS);
  const html = readFileSync(path, 'utf8');
  assert.equal((html.match(/<path class="series"/g) ?? []).length, expectedPathCount());
  assert.match(html, /CE-only student/);
});

test('report renders in headless Chromium with the curves drawn', { timeout: 120_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === 'true') assert.fail(`${CHROMIUM} is missing in CI: .ci/run must install the chromium package`);
    t.diagnostic(`browser check skipped: ${CHROMIUM} not found (install with: apt-get install -y chromium)`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'report-browser-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = writeReport(dir, RUNS, OPTS);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1200 }, deviceScaleFactor: 1 });
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(pathToFileURL(path).href);
    assert.deepEqual(requests, [pathToFileURL(path).href], 'the report loads nothing but itself');

    assert.equal(await page.locator('svg.chart').count(), runCharts(RUNS, OPTS).length);
    assert.equal(await page.locator('svg.chart path.series').count(), expectedPathCount());
    // Every path has geometry, i.e. the browser parsed its d attribute.
    const widths = await page.$$eval('svg.chart path.series', (els) => els.map((e) => (e as SVGGraphicsElement).getBBox().width));
    assert.ok(
      widths.every((w) => w > 100),
      `path widths: ${widths.join(', ')}`,
    );

    const first = decodePng(await page.locator('svg.chart').first().screenshot());
    const kd = countColor(first, PALETTE[0], 8);
    const ce = countColor(first, PALETTE[1], 8);
    const unused = countColor(first, PALETTE[3], 8);
    // The teacher's line (its validation CE) is on the validation CE chart.
    const validation = decodePng(
      await page
        .locator('svg.chart')
        .nth(runCharts(RUNS, OPTS).findIndex((c) => c.title === 'Validation CE'))
        .screenshot(),
    );
    const teacher = countColor(validation, TEACHER_COLOR, 8);
    t.diagnostic(
      `training-loss chart ${first.width}x${first.height}: KD ${kd}, CE ${ce}, unused colour ${unused} pixels; validation chart: teacher ${teacher} pixels`,
    );
    assert.ok(kd > 500, `KD student line pixels: ${kd}`);
    assert.ok(ce > 500, `CE-only student line pixels: ${ce}`);
    assert.ok(teacher > 200, `teacher line pixels: ${teacher}`);
    assert.ok(unused < 10, `a colour no series uses is absent: ${unused}`);

    // The whole page renders too (table, all charts) without growing absurdly.
    const full = decodePng(await page.screenshot({ fullPage: true }));
    assert.ok(full.height > first.height * 2, `page height ${full.height}`);
  } finally {
    await browser.close();
  }
});
