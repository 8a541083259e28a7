/**
 * The human side of the results: a markdown row per measurement, a grouped bar chart (SVG) of the latest figure per
 * configuration, and the specs of the scaling sweep's line charts; benchmarks/results/render.ts lays them out as
 * benchmarks/results/README.md.
 */
import { PALETTE, type ChartSpec } from '../src/logging/chart.ts';
import type { BenchRecord } from './results.ts';

const fmt = (v: number | null, digits = 0): string =>
  v === null || !Number.isFinite(v) ? '–' : v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
/** Tokens/s: one decimal below 100, where a rounded integer would hide a 5% difference. */
const tps = (v: number | null): string => fmt(v, v !== null && v < 100 ? 1 : 0);
const mib = (b: number | null | undefined): string => (b == null ? '–' : `${Math.round(b / 2 ** 20).toLocaleString('en-US')}`);

export const TABLE_HEADER = [
  '| date | config | backend | devices | ours tok/s | PyTorch tok/s | ours / PyTorch | ours ms/step: read · teacher · student fwd+bwd · optimizer | peak MiB ours / PyTorch: device memory on cuda, else RSS | machine | command |',
  '|---|---|---|---:|---:|---:|---:|---|---:|---|---|',
];

/** The peer's tokens/s, or why there is none; "compiled" when it ran under torch.compile with fused AdamW. */
export function peerThroughput(r: BenchRecord): string {
  if (r.peer_oom) return 'out of memory';
  if (r.peer_tokens_per_s === null) return `– (${r.peer === 'none' ? 'not run' : 'unavailable'})`;
  return `${tps(r.peer_tokens_per_s)}${r.peer_mode?.compiled ? ' compiled' : ''}`;
}

/**
 * Peak memory of each side: on a GPU the device's (ours: the cuda allocator's peak; the peer's:
 * torch.cuda.max_memory_allocated), which is what decides whether a shape fits; else the process's peak RSS.
 */
export function peakMemory(r: BenchRecord): string {
  const ours = r.memory.ours.peak_device_bytes ?? null;
  const peer = r.peer_oom ? r.peer_oom.peak_device_bytes : (r.memory.peer?.peak_device_bytes ?? null);
  if (ours !== null || peer !== null) return `${mib(ours)} / ${mib(peer)}${r.peer_oom ? ' (OOM)' : ''} device`;
  return `${mib(r.memory.ours.peak_rss_bytes)} / ${mib(r.memory.peer?.peak_rss_bytes)} RSS`;
}

export function markdownRow(r: BenchRecord): string {
  const s = r.stages.ours;
  // With devices > 1 the stages run in the workers; the wall time per step is all the bench sees.
  const stages = s
    ? [s.read, s.teacherLogits, s['student fwd+bwd'], s.optimizer].map((v) => fmt(v)).join(' · ')
    : `– (${fmt(r.wall_ms_per_step.ours)} wall, ${devicesOf(r)} processes)`;
  // Older records have no load average; a load above the core count means the figures were taken on a busy machine.
  const load = r.machine.load_avg ? `; load ${r.machine.load_avg.before.toFixed(1)}→${r.machine.load_avg.after.toFixed(1)}` : '';
  const machine = `${r.machine.cpu}, ${r.machine.cores} cores${r.peer_threads ? `; torch ${r.machine.torch ?? '?'} on ${r.peer_threads} threads` : ''}${load}`;
  return `| ${r.date.slice(0, 10)} | ${r.config} | ${r.backend} | ${devicesOf(r)} | ${tps(r.ours_tokens_per_s)} | ${peerThroughput(r)} | ${fmt(r.ratio, 3)} | ${stages} | ${peakMemory(r)} | ${machine} | \`${r.command}\` |`;
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
    const bars: [number | null, string][] = [
      [r.ours_tokens_per_s, PALETTE[0]],
      [r.peer_tokens_per_s, PALETTE[1]],
    ];
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
    parts.push(
      `<text x="${cx}" y="${pad.t + plotH + 18}" text-anchor="middle">${escapeXml(r.config)} · ${escapeXml(r.backend)}${devicesOf(r) > 1 ? ` · DP ${devicesOf(r)}` : ''}</text>`,
    );
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

export function scalingCharts(sweep: BenchRecord[]): ChartSpec[] {
  const axes: [NonNullable<BenchRecord['axis']>, string][] = [
    ['seq', 'sequence length'],
    ['vocab', 'vocabulary size'],
    ['width', 'student hidden size (teacher 2x)'],
  ];
  return axes
    .map(([axis, label]): ChartSpec => {
      const pts = sweep.filter((r) => r.axis === axis).sort((a, b) => (a.x ?? 0) - (b.x ?? 0));
      return {
        title: `KD tokens per s vs ${axis}`,
        xLabel: label,
        yLabel: 'tokens/s',
        series: [
          { label: 'ours (tfjs)', color: PALETTE[0], points: pts.map((r) => ({ x: r.x ?? 0, y: r.ours_tokens_per_s })) },
          {
            label: 'PyTorch',
            color: PALETTE[1],
            points: pts.filter((r) => r.peer_tokens_per_s !== null).map((r) => ({ x: r.x ?? 0, y: r.peer_tokens_per_s ?? 0 })),
          },
        ],
      };
    })
    .filter((c) => c.series[0].points.length > 0);
}
