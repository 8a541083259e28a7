/**
 * The human side of the results: a markdown row per measurement, benchmarks/results/README.md regenerated from
 * results.jsonl (so it never disagrees with the data), a grouped bar chart (SVG) of the latest figure per
 * configuration, and line charts (PNG, via src/logging/plot.ts) of the latest scaling sweep.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PALETTE, type ChartSpec } from '../src/logging/chart.ts';
import { writeChartPngs } from '../src/logging/plot.ts';
import type { BenchRecord } from './results.ts';
import type { Stage } from './stageClock.ts';

const fmt = (v: number | null, digits = 0): string => (v === null || !Number.isFinite(v) ? '–' : v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));
/** Tokens/s: one decimal below 100, where a rounded integer would hide a 5% difference. */
const tps = (v: number | null): string => fmt(v, v !== null && v < 100 ? 1 : 0);
const mib = (b: number | null | undefined): string => (b == null ? '–' : `${Math.round(b / 2 ** 20).toLocaleString('en-US')}`);

export const TABLE_HEADER = [
  '| date | config | backend | devices | ours tok/s | PyTorch tok/s | ours / PyTorch | ours ms/step: read · teacher · student fwd+bwd · optimizer | peak RSS MiB ours / PyTorch | machine | command |',
  '|---|---|---|---:|---:|---:|---:|---|---:|---|---|',
];

export function markdownRow(r: BenchRecord): string {
  const s = r.stages.ours;
  // With devices > 1 the stages run in the workers; the wall time per step is all the bench sees.
  const stages = s ? [s.read, s.teacherLogits, s['student fwd+bwd'], s.optimizer].map((v) => fmt(v)).join(' · ') : `– (${fmt(r.wall_ms_per_step.ours)} wall, ${devicesOf(r)} processes)`;
  const peer = r.peer_tokens_per_s === null ? `– (${r.peer === 'none' ? 'not run' : 'unavailable'})` : tps(r.peer_tokens_per_s);
  // Older records have no load average; a load above the core count means the figures were taken on a busy machine.
  const load = r.machine.load_avg ? `; load ${r.machine.load_avg.before.toFixed(1)}→${r.machine.load_avg.after.toFixed(1)}` : '';
  const machine = `${r.machine.cpu}, ${r.machine.cores} cores${r.peer_threads ? `; torch ${r.machine.torch ?? '?'} on ${r.peer_threads} threads` : ''}${load}`;
  return `| ${r.date.slice(0, 10)} | ${r.config} | ${r.backend} | ${devicesOf(r)} | ${tps(r.ours_tokens_per_s)} | ${peer} | ${fmt(r.ratio, 3)} | ${stages} | ${mib(r.memory.ours.peak_rss_bytes)} / ${mib(r.memory.peer?.peak_rss_bytes)} | ${machine} | \`${r.command}\` |`;
}

/** Processes that ran ours (records from before --devices ran in one). */
export const devicesOf = (r: BenchRecord): number => r.devices ?? 1;

/** The newest record per (config, backend, devices, machine): what the chart shows. */
function latestPerConfig(records: BenchRecord[]): BenchRecord[] {
  const m = new Map<string, BenchRecord>();
  for (const r of records) if (r.kind === 'config') m.set(`${r.config}|${r.backend}|${devicesOf(r)}|${r.machine.cpu}`, r);
  return [...m.values()];
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c] ?? c);
}

/**
 * Grouped bars, ours beside PyTorch, on a log scale: S and tiny differ by orders of magnitude in tokens/s and
 * a linear axis would flatten every bar but one.
 */
export function throughputSvg(records: BenchRecord[]): string {
  const rows = latestPerConfig(records);
  const W = 760;
  const H = 360;
  const pad = { l: 70, r: 20, t: 40, b: 70 };
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const values = rows.flatMap((r) => [r.ours_tokens_per_s, r.peer_tokens_per_s ?? 0]).filter((v) => v > 0);
  const lo = Math.floor(Math.log10(Math.min(...values, 10)));
  const hi = Math.ceil(Math.log10(Math.max(...values, 10)));
  const y = (v: number): number => pad.t + plotH - ((Math.log10(v) - lo) / Math.max(1, hi - lo)) * plotH;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${pad.l}" y="22" font-size="14">Online KD throughput, tokens/s (log scale): ours vs PyTorch, same machine</text>`,
  ];
  for (let e = lo; e <= hi; e++) {
    const yy = y(10 ** e);
    parts.push(`<line x1="${pad.l}" x2="${W - pad.r}" y1="${yy}" y2="${yy}" stroke="#e6e6e6"/>`);
    parts.push(`<text x="${pad.l - 8}" y="${yy + 4}" text-anchor="end">${(10 ** e).toLocaleString('en-US')}</text>`);
  }
  const group = plotW / Math.max(1, rows.length);
  const bw = Math.min(60, group / 3);
  rows.forEach((r, i) => {
    const cx = pad.l + group * (i + 0.5);
    const bars: [number | null, string][] = [[r.ours_tokens_per_s, PALETTE[0]], [r.peer_tokens_per_s, PALETTE[1]]];
    bars.forEach(([v, color], j) => {
      const x = cx - bw + j * bw;
      if (v === null || v <= 0) {
        parts.push(`<text x="${x + bw / 2}" y="${pad.t + plotH - 4}" text-anchor="middle" fill="#999">n/a</text>`);
        return;
      }
      const top = y(Math.max(v, 10 ** lo));
      parts.push(`<rect x="${x + 2}" y="${top}" width="${bw - 4}" height="${pad.t + plotH - top}" fill="${color}"><title>${fmt(v)} tokens/s</title></rect>`);
      parts.push(`<text x="${x + bw / 2}" y="${top - 4}" text-anchor="middle" font-size="10">${tps(v)}</text>`);
    });
    parts.push(`<text x="${cx}" y="${pad.t + plotH + 18}" text-anchor="middle">${escapeXml(r.config)} · ${escapeXml(r.backend)}${devicesOf(r) > 1 ? ` · DP ${devicesOf(r)}` : ''}</text>`);
    parts.push(`<text x="${cx}" y="${pad.t + plotH + 34}" text-anchor="middle" fill="#555">ratio ${fmt(r.ratio, 2)}</text>`);
  });
  parts.push(`<line x1="${pad.l}" x2="${pad.l}" y1="${pad.t}" y2="${pad.t + plotH}" stroke="#999"/>`);
  parts.push(`<line x1="${pad.l}" x2="${W - pad.r}" y1="${pad.t + plotH}" y2="${pad.t + plotH}" stroke="#999"/>`);
  const ly = H - 14;
  parts.push(`<rect x="${pad.l}" y="${ly - 10}" width="14" height="10" fill="${PALETTE[0]}"/><text x="${pad.l + 20}" y="${ly}">ours (tfjs)</text>`);
  parts.push(`<rect x="${pad.l + 120}" y="${ly - 10}" width="14" height="10" fill="${PALETTE[1]}"/><text x="${pad.l + 140}" y="${ly}">PyTorch peer</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/** The latest sweep's points: the scaling records that share the last one's run id (one invocation). */
function latestSweep(records: BenchRecord[]): BenchRecord[] {
  const scaling = records.filter((r) => r.kind === 'scaling');
  if (scaling.length === 0) return [];
  const last = scaling[scaling.length - 1].run_id;
  return scaling.filter((r) => r.run_id === last);
}

export function scalingCharts(sweep: BenchRecord[]): ChartSpec[] {
  const axes: [NonNullable<BenchRecord['axis']>, string][] = [['seq', 'sequence length'], ['vocab', 'vocabulary size'], ['width', 'student hidden size (teacher 2x)']];
  return axes
    .map(([axis, label]): ChartSpec => {
      const pts = sweep.filter((r) => r.axis === axis).sort((a, b) => (a.x ?? 0) - (b.x ?? 0));
      return {
        title: `KD tokens per s vs ${axis}`,
        xLabel: label,
        yLabel: 'tokens/s',
        series: [
          { label: 'ours (tfjs)', color: PALETTE[0], points: pts.map((r) => ({ x: r.x ?? 0, y: r.ours_tokens_per_s })) },
          { label: 'PyTorch', color: PALETTE[1], points: pts.filter((r) => r.peer_tokens_per_s !== null).map((r) => ({ x: r.x ?? 0, y: r.peer_tokens_per_s ?? 0 })) },
        ],
      };
    })
    .filter((c) => c.series[0].points.length > 0);
}

/** Where each side spends a step, for the newest run of each configuration: the gap is in a stage, not everywhere. */
function stageComparison(rows: BenchRecord[]): string[] {
  const withPeer = rows.filter((r) => r.stages.peer !== null && r.stages.ours !== null);
  if (withPeer.length === 0) return [];
  const out = ['## Where a step goes (ms per step, newest run per configuration)', ''];
  for (const r of withPeer) {
    out.push(`**${r.config}** on ${r.backend} (${r.date.slice(0, 10)}):`, '', '| stage | ours | PyTorch | ours / PyTorch time |', '|---|---:|---:|---:|');
    for (const [k, v] of Object.entries(r.stages.ours ?? {})) {
      const p = r.stages.peer?.[k as Stage] ?? null;
      out.push(`| ${k} | ${fmt(v, 1)} | ${fmt(p, 1)} | ${p ? fmt(v / p, 2) : '–'} |`);
    }
    out.push(`| whole step (wall) | ${fmt(r.wall_ms_per_step.ours, 1)} | ${fmt(r.wall_ms_per_step.peer, 1)} | ${r.wall_ms_per_step.peer ? fmt(r.wall_ms_per_step.ours / r.wall_ms_per_step.peer, 2) : '–'} |`, '');
  }
  return out;
}

/** Rewrites README.md, throughput.svg and (when there is a sweep) the scaling PNGs in `dir` from `records`. */
export function writeResultsReadme(dir: string, records: BenchRecord[]): string[] {
  const written: string[] = [];
  const svgPath = join(dir, 'throughput.svg');
  writeFileSync(svgPath, throughputSvg(records));
  written.push(svgPath);
  const sweep = latestSweep(records);
  const pngs = sweep.length > 0 ? writeChartPngs(dir, scalingCharts(sweep)) : [];
  written.push(...pngs);

  const configs = records.filter((r) => r.kind === 'config');
  const lines = [
    '# Streaming benchmark results',
    '',
    '<!-- Generated by `npm run bench` from results.jsonl; edits here are overwritten. -->',
    '',
    'End-to-end online distillation throughput (tokens/s): random-init Llama teacher and student (shapes in',
    '`benchmarks/configs.json`), random token windows, forward KL at τ = 1, backward through the student only,',
    'global-norm clipping at 1.0 and AdamW, fp32. **Ours** is this project\'s pipeline, the operators composed as in',
    '`pipelines/distill.ts`; the **PyTorch peer** (`benchmarks/peer/kd_step.py`) is the same step in plain torch, run',
    'in the same invocation on the same machine, after ours. Figures are over the measured steps, after warm-up.',
    'Stage times are busy milliseconds per step; "student fwd+bwd" is the student\'s forward, the loss and the',
    'backward pass, which run under one gradient tape. Ours on wasm uses one thread (tfjs-wasm in Node has no',
    'threads); the peer uses `--threads` torch threads (2 by default), both on the same machine. With `--devices N`',
    '(column "devices") ours runs as N data-parallel worker processes through the launcher of `distill run --devices N`,',
    'on the same global batch and shapes; tokens/s counts the whole global batch, and the per-stage split is not measured.',
    '',
    '![throughput](throughput.svg)',
    '',
    ...TABLE_HEADER,
    ...configs.map(markdownRow),
    '',
    ...stageComparison(latestPerConfig(records)),
  ];
  if (sweep.length > 0) {
    lines.push('## Scaling (latest sweep)', '', `Command: \`${sweep[0].command}\`; each point starts from S and changes one axis.`, '');
    lines.push('| axis | value | ours tok/s | PyTorch tok/s | ours / PyTorch |', '|---|---:|---:|---:|---:|');
    for (const r of sweep) lines.push(`| ${r.axis} | ${r.x} | ${tps(r.ours_tokens_per_s)} | ${tps(r.peer_tokens_per_s)} | ${fmt(r.ratio, 3)} |`);
    lines.push('', ...pngs.map((p) => `![${p.split('/').pop()}](${p.split('/').pop()})`), '');
  }
  lines.push('Reproduce: `npm run bench -- --config S --json` (add `--scaling` for the sweep, `--peer none` for ours alone).', '');
  const readme = join(dir, 'README.md');
  writeFileSync(readme, lines.join('\n'));
  written.push(readme);
  return written;
}
