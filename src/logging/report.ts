/**
 * End-of-run HTML report: one self-contained file (inline SVG and CSS, no scripts, no network) that
 * opens from disk in any browser, also on a machine without the training environment.
 * Several runs overlay on each chart, so a distilled student can be read against a CE-only one.
 */
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomicWrite.ts';
import { layoutChart, SWATCH_W, type ChartLayout, type ChartSpec } from './chart.ts';
import { readMetrics } from './metricsLog.ts';
import { runCharts, summarizeRun, type RunChartOptions, type RunMetrics } from './runCharts.ts';

export const REPORT_FILE = 'report.html';

/** SVG text metrics at the 12px sans-serif the report uses (an average advance, enough for layout). */
const SVG_TEXT = { charW: 7, lineH: 14 };
const DASH = '6 4';
// Clip-path ids must be unique within the document; a module counter is enough for one process.
let clipId = 0;

export interface ReportOptions extends RunChartOptions {
  title?: string;
  /** Free-form key/value facts shown under the title (model, data, flags). */
  facts?: Readonly<Record<string, string | number>>;
  chartWidth?: number;
  chartHeight?: number;
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const num = (v: number): string => (Math.round(v * 100) / 100).toString();

function pathData(points: readonly { x: number; y: number }[], layout: ChartLayout): string {
  let d = '';
  let pen = false;
  for (const p of points) {
    // A non-finite value breaks the line instead of dragging it to the axis.
    if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${num(layout.sx(p.x))} ${num(layout.sy(p.y))}`;
    pen = true;
  }
  return d;
}

/**
 * One chart as an inline SVG. Each data series is exactly one <path class="series">; gridlines, axes,
 * teacher lines and legend swatches are <line> elements, so the number of paths counts the curves.
 */
export function chartSvg(spec: ChartSpec, width = 760, height = 360): string {
  const L = layoutChart(spec, width, height, SVG_TEXT);
  const { plot } = L;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(spec.title)}">`,
  );
  out.push(`<title>${esc(spec.title)}</title>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${plot.x}" y="${SVG_TEXT.lineH + 2}" class="t">${esc(spec.title)}</text>`);
  for (const t of L.yTicks) {
    out.push(`<line x1="${plot.x}" x2="${plot.x + plot.w}" y1="${num(t.pos)}" y2="${num(t.pos)}" class="grid"/>`);
    out.push(`<text x="${plot.x - 6}" y="${num(t.pos + 4)}" text-anchor="end">${esc(t.label)}</text>`);
  }
  for (const t of L.xTicks) {
    out.push(`<line x1="${num(t.pos)}" x2="${num(t.pos)}" y1="${plot.y}" y2="${plot.y + plot.h}" class="grid"/>`);
    out.push(`<text x="${num(t.pos)}" y="${plot.y + plot.h + SVG_TEXT.lineH + 2}" text-anchor="middle">${esc(t.label)}</text>`);
  }
  out.push(`<rect x="${plot.x}" y="${plot.y}" width="${plot.w}" height="${plot.h}" class="frame"/>`);
  out.push(`<text x="${plot.x + plot.w / 2}" y="${plot.y + plot.h + SVG_TEXT.lineH * 2 + 6}" text-anchor="middle">${esc(spec.xLabel)}</text>`);
  const ly = plot.y + plot.h / 2;
  out.push(`<text x="${SVG_TEXT.lineH}" y="${ly}" text-anchor="middle" transform="rotate(-90 ${SVG_TEXT.lineH} ${ly})">${esc(spec.yLabel)}</text>`);
  out.push(`<clipPath id="clip-${clipId}"><rect x="${plot.x}" y="${plot.y}" width="${plot.w}" height="${plot.h}"/></clipPath>`);
  out.push(`<g clip-path="url(#clip-${clipId++})">`);
  for (const h of spec.hlines ?? []) {
    const y = num(L.sy(h.y));
    out.push(
      `<line x1="${plot.x}" x2="${plot.x + plot.w}" y1="${y}" y2="${y}" stroke="${h.color}" stroke-width="2" stroke-dasharray="${DASH}" class="hline"><title>${esc(h.label)}: ${h.y}</title></line>`,
    );
  }
  for (const s of spec.series) {
    const dash = s.dashed ? ` stroke-dasharray="${DASH}"` : '';
    out.push(
      `<path class="series" d="${pathData(s.points, L)}" fill="none" stroke="${s.color}" stroke-width="2" stroke-linejoin="round"${dash}><title>${esc(s.label)}</title></path>`,
    );
  }
  out.push('</g>');
  for (const it of L.legend) {
    const dash = it.dashed ? ` stroke-dasharray="${DASH}"` : '';
    out.push(`<line x1="${it.x}" x2="${it.x + SWATCH_W}" y1="${it.y}" y2="${it.y}" stroke="${it.color}" stroke-width="3"${dash}/>`);
    out.push(`<text x="${it.x + SWATCH_W + 6}" y="${it.y + 4}">${esc(it.label)}</text>`);
  }
  out.push('</svg>');
  return out.join('\n');
}

const CSS = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}
table{border-collapse:collapse;margin:12px 0 20px}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{background:#fff;border:1px solid #ddd;font:12px sans-serif}
svg .t{font-weight:600;font-size:13px}
svg .grid{stroke:#e6e6e6;stroke-width:1}
svg .frame{fill:none;stroke:#999;stroke-width:1}
.facts{color:#555}
`;

function fmt(v: number | undefined, digits = 4): string {
  if (v === undefined || !Number.isFinite(v)) return '–';
  return Math.abs(v) >= 1000 ? Math.round(v).toLocaleString('en-US') : v.toPrecision(digits);
}

/** The whole report as an HTML string (see writeReport). */
export function buildReportHtml(runs: readonly RunMetrics[], opts: ReportOptions = {}): string {
  const title = opts.title ?? 'Training report';
  const charts = runCharts(runs, opts);
  const rows = runs
    .map(summarizeRun)
    .map(
      (s) =>
        `<tr><td>${esc(s.label)}</td><td>${s.steps}</td><td>${fmt(s.finalTrainLoss)}</td><td>${fmt(s.bestValidLoss)}${s.bestValidStep !== undefined ? ` @ ${s.bestValidStep}` : ''}</td><td>${fmt(s.meanTokensPerS, 3)}</td></tr>`,
    );
  if (opts.teacher) rows.push(`<tr><td>${esc(opts.teacher.label ?? 'teacher')}</td><td>–</td><td>–</td><td>${fmt(opts.teacher.loss)}</td><td>–</td></tr>`);
  const facts = Object.entries(opts.facts ?? {})
    .map(([k, v]) => `<b>${esc(k)}</b>: ${esc(String(v))}`)
    .join(' · ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${esc(title)}</h1>
${facts ? `<p class="facts">${facts}</p>` : ''}
<table>
<tr><th>run</th><th>steps</th><th>final train loss</th><th>best validation CE @ step</th><th>mean tokens/s</th></tr>
${rows.join('\n')}
</table>
<div class="charts">
${charts.map((c) => chartSvg(c, opts.chartWidth, opts.chartHeight)).join('\n')}
</div>
<p class="facts">Generated ${esc(new Date().toISOString())}</p>
</body>
</html>
`;
}

/** Writes `<dir>/report.html` atomically and returns its path. */
export function writeReport(dir: string, runs: readonly RunMetrics[], opts: ReportOptions = {}): string {
  const path = join(dir, REPORT_FILE);
  writeFileAtomic(path, buildReportHtml(runs, opts));
  return path;
}

/**
 * Convenience for the end of a run: reads `metrics.jsonl` of this run and of any runs to compare
 * against (e.g. the CE-only baseline) and writes the report into `runDir`.
 */
export function writeRunReport(runDir: string, label: string, compare: readonly { label: string; dir: string }[] = [], opts: ReportOptions = {}): string {
  const runs: RunMetrics[] = [{ label, records: readMetrics(runDir) }, ...compare.map((c) => ({ label: c.label, records: readMetrics(c.dir) }))];
  return writeReport(runDir, runs, opts);
}
