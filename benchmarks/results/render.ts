/**
 * benchmarks/results/README.md, rendered from results.jsonl so that the page never disagrees with the data:
 *
 *   node --import tsx benchmarks/results/render.ts            rewrite README.md and throughput.svg beside this file
 *   node --import tsx benchmarks/results/render.ts --current  print the current-figures table (the README's rows)
 *
 * test/docs/resultsReadme.test.ts fails when the checked-in README.md differs from the render, and when the
 * project's README.md does not carry the current-figures table, so a new measurement shows up in both.
 */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readResults, type BenchRecord } from '../results.ts';
import { TABLE_HEADER, devicesOf, markdownRow, scalingCharts, throughputSvg } from '../table.ts';
import { chartFileStem, writeChartPngs } from '../../src/logging/plot.ts';
import type { Stage } from '../stageClock.ts';
import { CONFIG_NAMES } from '../configs.ts';

export const RESULTS_DIR = dirname(fileURLToPath(import.meta.url));

const fmt = (v: number | null, digits = 0): string =>
  v === null || !Number.isFinite(v) ? '–' : v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
/** Tokens/s: one decimal below 100, where a rounded integer would hide a 5% difference. */
const tps = (v: number | null): string => fmt(v, v !== null && v < 100 ? 1 : 0);

/** `--precision` of ours, from the backend detail the bench records ("...; precision bf16-mixed"); '32' when absent. */
export function precisionOf(r: BenchRecord): string {
  return /precision ([^;\s]+)/.exec(r.backend_detail)?.[1] ?? '32';
}

/** `--recompute_granularity` of ours, from the backend detail ("...; recompute selective"); null when absent. */
export function recomputeOf(r: BenchRecord): string | null {
  return /recompute ([^;\s]+)/.exec(r.backend_detail)?.[1] ?? null;
}

/**
 * The command as a user would type it. The bench records `argv.join(' ')`, which loses the quotes around
 * `--peer_args "--device cuda"`; in every record so far the peer's arguments are the last flag before the
 * device machine's `--results` folder, so they are re-quoted up to it, and the folder (a path on that machine) is dropped.
 */
export function displayCommand(command: string): string {
  let c = command.replace(/\s--results\s+\S+/, '');
  const m = /\s--peer_args\s+(?!["'])(.+)$/.exec(c);
  if (m) c = `${c.slice(0, m.index)} --peer_args "${m[1]}"`;
  return c;
}

/** The peer ran compiled (torch.compile + fused AdamW): from its own report, or for a run that failed, from its arguments. */
export function peerCompiled(r: BenchRecord): boolean {
  return r.peer_mode?.compiled ?? r.peer_oom?.compiled ?? /--peer_args\s+"?[^"]*--compile\b/.test(displayCommand(r.command));
}

/** What distinguishes one configuration from another in the current-figures table: an eager and a compiled peer are two rows. */
const configKey = (r: BenchRecord): string =>
  `${r.config}|${r.backend}|${devicesOf(r)}|${precisionOf(r)}|${recomputeOf(r)}|${peerCompiled(r)}|${gpuOf(r)}|${r.machine.cpu}`;

/** The newest `kind: config` record of each configuration, smallest configuration first, then by backend and layout. */
export function latestPerConfig(records: readonly BenchRecord[]): BenchRecord[] {
  const m = new Map<string, BenchRecord>();
  for (const r of records) if (r.kind === 'config') m.set(configKey(r), r);
  const size = (r: BenchRecord): number => (CONFIG_NAMES as readonly string[]).indexOf(r.config);
  return [...m.values()].sort(
    (a, b) => size(a) - size(b) || a.backend.localeCompare(b.backend) || devicesOf(a) - devicesOf(b) || precisionOf(a).localeCompare(precisionOf(b)),
  );
}

/**
 * The GPU a record ran on, from the backend's own description: cuda names the device first ("NVIDIA H200, compute
 * capability 9.0, ..."), webgpu's adapter gives vendor then device ("nvidia nvidia-h200 NVIDIA: 580..."). Null on CPU.
 */
function gpuOf(r: BenchRecord): string | null {
  if (r.backend === 'cuda') return r.backend_detail.split(/[,;]/)[0].trim() || null;
  if (r.backend === 'webgpu') return /^\S+\s+(\S+)/.exec(r.backend_detail)?.[1] ?? null;
  return null;
}

function peerCell(r: BenchRecord): string {
  if (r.peer_tokens_per_s === null && !r.peer_oom) return `– (${r.peer === 'none' ? 'not run' : 'unavailable'})`;
  // The peer's device and precision are among the arguments passed to it; CPU fp32 is its default.
  const args = /--peer_args\s+"?([^"]*)"?/.exec(displayCommand(r.command))?.[1] ?? '';
  const where = /--device\s+cuda/.test(args) ? 'CUDA' : `CPU, ${r.peer_threads ?? '?'} threads`;
  const precision = /--precision\s+(\S+)/.exec(args)?.[1] ?? 'fp32';
  const how = `${where}, ${precision}${peerCompiled(r) ? ', compiled' : ''}`;
  if (r.peer_oom) return `out of memory (${how})`;
  return `${tps(r.peer_tokens_per_s)} (${how})`;
}

export const CURRENT_HEADER = [
  '| config | backend | processes | machine | ours tok/s | PyTorch tok/s | ours / PyTorch | date | command |',
  '|---|---|---:|---|---:|---:|---:|---|---|',
];

/** One row per configuration: its newest measurement. This table is what the project's README shows. */
export function currentFiguresTable(records: readonly BenchRecord[]): string[] {
  return [
    ...CURRENT_HEADER,
    ...latestPerConfig(records).map((r) => {
      const precision = precisionOf(r);
      const recompute = recomputeOf(r);
      const backend = [r.backend, precision === '32' ? '' : precision, recompute ? `recompute ${recompute}` : ''].filter(Boolean).join(', ');
      const gpu = gpuOf(r);
      const machine = `${gpu ? `${gpu}; ` : ''}${r.machine.cpu}, ${r.machine.cores} cores`;
      return `| ${r.config} | ${backend} | ${devicesOf(r)} | ${machine} | ${tps(r.ours_tokens_per_s)} | ${peerCell(r)} | ${fmt(r.ratio, 3)} | ${r.date.slice(0, 10)} | \`${displayCommand(r.command)}\` |`;
    }),
  ];
}

/** Where each side spends a step, for the newest run of each configuration: the gap is in a stage, not everywhere. */
function stageComparison(rows: readonly BenchRecord[]): string[] {
  const withPeer = rows.filter((r) => r.stages.peer !== null && r.stages.ours !== null);
  if (withPeer.length === 0) return [];
  const out = ['## Where a step goes (ms per step, newest run per configuration)', ''];
  for (const r of withPeer) {
    const precision = precisionOf(r);
    out.push(
      `**${r.config}** on ${r.backend}${precision === '32' ? '' : `, ${precision}`} (${r.date.slice(0, 10)}):`,
      '',
      '| stage | ours | PyTorch | ours / PyTorch time |',
      '|---|---:|---:|---:|',
    );
    for (const [k, v] of Object.entries(r.stages.ours ?? {})) {
      const p = r.stages.peer?.[k as Stage] ?? null;
      out.push(`| ${k} | ${fmt(v, 1)} | ${fmt(p, 1)} | ${p ? fmt(v / p, 2) : '–'} |`);
    }
    const wall = r.wall_ms_per_step;
    out.push(`| whole step (wall) | ${fmt(wall.ours, 1)} | ${fmt(wall.peer, 1)} | ${wall.peer ? fmt(wall.ours / wall.peer, 2) : '–'} |`, '');
  }
  return out;
}

const gib = (b: number | null | undefined): string => (b == null ? '–' : fmt(b / 2 ** 30, 1));

/**
 * Peak device memory of each side, for the newest GPU run of each configuration that measured it: whether a shape
 * fits is the question of the large configurations, and the peer may run out where ours does not.
 */
function deviceMemoryTable(rows: readonly BenchRecord[]): string[] {
  const measured = rows.filter((r) => r.memory.ours.peak_device_bytes != null || r.memory.peer?.peak_device_bytes != null || r.peer_oom);
  if (measured.length === 0) return [];
  const out = [
    '## Peak device memory (GiB, newest run per configuration)',
    '',
    "Ours: the cuda allocator's peak of bytes held by tensors; PyTorch: `torch.cuda.max_memory_allocated()`. Both over the whole run, warm-up included.",
    '',
    '| config | backend | ours | PyTorch | PyTorch ran | date |',
    '|---|---|---:|---:|---|---:|',
  ];
  for (const r of measured) {
    const precision = precisionOf(r);
    const peer = r.peer_oom
      ? `out of memory in ${r.peer_oom.where} (${gib(r.peer_oom.peak_device_bytes)} held, of ${gib(r.peer_oom.device_total_bytes)})`
      : gib(r.memory.peer?.peak_device_bytes);
    const mode = r.peer_mode ? `${r.peer_mode.precision}, ${r.peer_mode.compiled ? 'compiled' : 'eager'}` : peerCompiled(r) ? 'compiled' : '–';
    out.push(
      `| ${r.config} | ${r.backend}${precision === '32' ? '' : `, ${precision}`} | ${gib(r.memory.ours.peak_device_bytes)} | ${peer} | ${mode} | ${r.date.slice(0, 10)} |`,
    );
  }
  out.push('');
  return out;
}

/** The latest sweep's points: the scaling records that share the last one's run id (one invocation). */
export function latestSweep(records: readonly BenchRecord[]): BenchRecord[] {
  const scaling = records.filter((r) => r.kind === 'scaling');
  if (scaling.length === 0) return [];
  const last = scaling[scaling.length - 1].run_id;
  return scaling.filter((r) => r.run_id === last);
}

/** The whole page for `records` (pure: the test compares it with the checked-in file). */
export function renderResultsReadme(records: readonly BenchRecord[]): string {
  const configs = records.filter((r) => r.kind === 'config');
  const lines = [
    '# Streaming benchmark results',
    '',
    '<!-- Rendered from results.jsonl by `node --import tsx benchmarks/results/render.ts`; edits here are overwritten. -->',
    '',
    'End-to-end online distillation throughput (tokens/s): random-init Llama teacher and student (shapes in',
    '`benchmarks/configs.json`), random token windows, forward KL at τ = 1, backward through the student only,',
    'global-norm clipping at 1.0 and AdamW; fp32 unless the backend says `bf16-mixed` (tensor-core matmuls, see',
    "[docs/backends.md](../../docs/backends.md)). **Ours** is this project's pipeline, the operators composed as in",
    '`pipelines/distill.ts`; the **PyTorch peer** (`benchmarks/peer/kd_step.py`) is the same step in plain torch, run',
    'in the same invocation on the same machine, after ours. Figures are over the measured steps, after warm-up.',
    'Stage times are busy milliseconds per step; "student fwd+bwd" is the student\'s forward, the loss and the',
    'backward pass, which run under one gradient tape. Ours on wasm uses one thread (tfjs-wasm in Node has no',
    'threads); the peer uses `--threads` torch threads (2 by default), both on the same machine. With `--devices N`',
    '(column "devices") ours runs as N data-parallel worker processes through the launcher of `distill run --devices N`,',
    'on the same global batch and shapes; tokens/s counts the whole global batch, and the per-stage split is not measured.',
    'How these figures moved, and why: [docs/performance.md](../../docs/performance.md).',
    '',
    '## Current figures (newest run per configuration)',
    '',
    ...currentFiguresTable(records),
    '',
    '![throughput](throughput.svg)',
    '',
    '## Every run',
    '',
    ...TABLE_HEADER,
    ...configs.map(markdownRow),
    '',
    ...stageComparison(latestPerConfig(records)),
    ...deviceMemoryTable(latestPerConfig(records)),
  ];
  const sweep = latestSweep(records);
  if (sweep.length > 0) {
    lines.push('## Scaling (latest sweep)', '', `Command: \`${displayCommand(sweep[0].command)}\`; each point starts from S and changes one axis.`, '');
    lines.push('| axis | value | ours tok/s | PyTorch tok/s | ours / PyTorch |', '|---|---:|---:|---:|---:|');
    for (const r of sweep) lines.push(`| ${r.axis} | ${r.x} | ${tps(r.ours_tokens_per_s)} | ${tps(r.peer_tokens_per_s)} | ${fmt(r.ratio, 3)} |`);
    const stems = scalingCharts(sweep).map((c) => `${chartFileStem(c.title)}.png`);
    lines.push('', ...stems.map((f) => `![${f}](${f})`), '');
  }
  lines.push('Reproduce: `npm run bench -- --config S --json` (add `--scaling` for the sweep, `--peer none` for ours alone).', '');
  return lines.join('\n');
}

/** Rewrites README.md, throughput.svg and (when there is a sweep) the scaling PNGs in `dir` from its results.jsonl. */
export function writeResultsPage(dir: string): string[] {
  const records = readResults(dir);
  const written = [join(dir, 'throughput.svg')];
  writeFileSync(written[0], throughputSvg(records));
  const sweep = latestSweep(records);
  if (sweep.length > 0) written.push(...writeChartPngs(dir, scalingCharts(sweep)));
  const readme = join(dir, 'README.md');
  writeFileSync(readme, renderResultsReadme(records));
  written.push(readme);
  return written;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--current')) {
    process.stdout.write(currentFiguresTable(readResults(RESULTS_DIR)).join('\n') + '\n');
  } else {
    process.stdout.write(`wrote ${writeResultsPage(RESULTS_DIR).join(', ')}\n`);
  }
}
