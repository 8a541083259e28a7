/**
 * `npm run bench -- [--config S|M|L|tiny] [--backend B] [--devices N] [--json] [--peer torch|none] [--steps N] [--scaling]`
 *
 * Streams the project's own online-KD pipeline and then the PyTorch peer on the same shapes, in this one
 * invocation, and reports tokens/s side by side with the ratio, per-stage busy time and peak memory. Each run is
 * appended to benchmarks/results/results.jsonl, from which the README table and the charts there are regenerated.
 * With --devices N > 1, ours runs as N data-parallel worker processes through run() and the launcher, as
 * `distill run --devices N` does (benchmarks/oursParallel.ts); the peer gets the same global batch either way.
 * Progress goes to stderr; stdout carries the markdown row and, with --json, one JSON object as its last line.
 */
import { cpus, loadavg, platform, release, arch } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend, BACKEND_CHOICES, type BackendChoice, type BackendReport } from '../src/backend/select.ts';
import { PRECISIONS, type Precision } from '../src/backend/webgpu/mixedPrecisionMatMul.ts';
import { parseFlags, usage } from '../src/cli/flags.ts';
import { benchShape, CONFIG_NAMES, scalingPoints, tokensPerStep, type BenchShape } from './configs.ts';
import { runOurs } from './ours.ts';
import { runOursParallel } from './oursParallel.ts';
import { DEFAULT_PYTHON, runPeer, type PeerOutcome } from './peer.ts';
import { appendResult, type BenchRecord, type Machine } from './results.ts';
import { markdownRow, TABLE_HEADER } from './table.ts';
import { writeResultsPage } from './results/render.ts';
import { RECOMPUTE_GRANULARITIES, type RecomputeGranularity } from '../src/model/attention.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const FLAGS = {
  config: { kind: 'string', help: 'model and batch shapes from benchmarks/configs.json', default: 'S', choices: CONFIG_NAMES },
  backend: { kind: 'string', help: 'tfjs backend for ours', default: 'auto', choices: BACKEND_CHOICES },
  precision: {
    kind: 'string',
    help: 'ours: 32, or bf16-mixed / 16-mixed for 16-bit tensor-core matmuls on cuda and webgpu (pair with --peer_args "--precision bf16" for the peer)',
    default: '32',
    choices: PRECISIONS,
  },
  devices: {
    kind: 'int',
    help: 'run ours as N data-parallel worker processes, as `distill run --devices N` (1: in this process, with per-stage times)',
    default: 1,
    min: 1,
  },
  json: { kind: 'boolean', help: 'print one JSON object as the last line of stdout' },
  peer: { kind: 'string', help: 'the peer to run beside ours', default: 'torch', choices: ['torch', 'none'] },
  steps: { kind: 'int', help: "measured steps (default: the config's; 2 per point with --scaling)", min: 1 },
  warmup: { kind: 'int', help: "warm-up steps before measuring (default: the config's; 1 with --scaling)", min: 0 },
  scaling: { kind: 'boolean', help: 'sweep seq length, vocabulary and width from --config, ours vs peer' },
  results: { kind: 'string', help: 'where results.jsonl, README.md and the charts go', default: 'benchmarks/results' },
  python: { kind: 'string', help: 'python interpreter with torch, for the peer', default: DEFAULT_PYTHON },
  threads: { kind: 'int', help: 'torch threads of the peer', default: 2, min: 1 },
  peer_args: { kind: 'string', help: 'more arguments for the peer, e.g. "--device cuda --precision bf16"' },
  peer_timeout_s: { kind: 'int', help: 'stop a peer run after this many seconds', default: 3600, min: 1 },
  regenerate: { kind: 'boolean', help: 'only rewrite README.md and the charts from results.jsonl; measure nothing' },
  recompute_granularity: {
    kind: 'string',
    help: 'ours: selective recomputes core attention in the backward instead of keeping its [heads, seq, seq] probabilities; full recomputes every layer, keeping only its input (as `distill run`, one layer a chunk)',
    choices: RECOMPUTE_GRANULARITIES,
  },
  help: { kind: 'boolean', help: 'print this help' },
} as const;

function log(line: string): void {
  process.stderr.write(line + '\n');
}

function machineInfo(torch: string | null, loadBefore: number): Machine {
  const c = cpus();
  return {
    cpu: c[0]?.model.trim() ?? 'unknown',
    cores: c.length,
    os: `${platform()} ${release()} ${arch()}`,
    node: process.version,
    torch,
    load_avg: { before: loadBefore, after: loadavg()[0] },
  };
}

interface Measure {
  configName: string;
  shape: BenchShape;
  steps: number;
  warmup: number;
  devices: number;
  recompute: RecomputeGranularity;
}

interface OursFigures {
  tokensPerS: number;
  wallMsPerStep: number;
  lastLoss: number;
  stages: BenchRecord['stages']['ours'];
  memory: BenchRecord['memory']['ours'];
}

/** Ours, in this process (per-stage times, tf memory) or as N data-parallel workers (wall time and RSS only). */
async function measureOurs(m: Measure, backend: BackendReport): Promise<OursFigures> {
  if (m.devices === 1) {
    const ours = await runOurs(m.shape, { backend, steps: m.steps, warmup: m.warmup, recompute: m.recompute, log });
    log(`ours: ${ours.tokensPerS.toFixed(1)} tokens/s (${ours.wallMsPerStep.toFixed(0)} ms/step, last loss ${ours.lastLoss.toFixed(4)})`);
    return {
      tokensPerS: ours.tokensPerS,
      wallMsPerStep: ours.wallMsPerStep,
      lastLoss: ours.lastLoss,
      stages: ours.stagesMsPerStep,
      memory: {
        peak_rss_bytes: ours.memory.rssBytes,
        peak_tf_bytes: ours.memory.tfBytes,
        peak_tf_tensors: ours.memory.tfTensors,
        peak_device_bytes: ours.memory.deviceBytes,
      },
    };
  }
  const dp = await runOursParallel(m.shape, { backend, devices: m.devices, steps: m.steps, warmup: m.warmup, recompute: m.recompute, log });
  const expected = tokensPerStep(m.shape) * m.steps;
  log(
    `ours: ${dp.tokensPerS.toFixed(1)} tokens/s on ${dp.workers} worker processes (${dp.wallMsPerStep.toFixed(0)} ms/step, last loss ${dp.lastLoss.toFixed(4)}; the ranks reported ${dp.reportedTokens} tokens for the measured steps, the global batch holds ${expected})`,
  );
  return {
    tokensPerS: dp.tokensPerS,
    wallMsPerStep: dp.wallMsPerStep,
    lastLoss: dp.lastLoss,
    stages: null,
    memory: { peak_rss_bytes: dp.peakRssBytes, peak_tf_bytes: null, peak_tf_tensors: null },
  };
}

async function measure(
  m: Measure,
  backend: BackendReport,
  flags: { peer: string; python: string; threads: number; timeoutMs: number; extraArgs: string[] },
): Promise<Omit<BenchRecord, 'kind' | 'date' | 'run_id' | 'config' | 'command' | 'machine'> & { torch: string | null }> {
  log(
    `— ${m.configName}${m.devices > 1 ? ` (ours on ${m.devices} data-parallel worker processes)` : ''}: vocab ${m.shape.vocab}, seq ${m.shape.seq}, batch ${m.shape.batch}, student ${JSON.stringify(m.shape.student)}, teacher ${JSON.stringify(m.shape.teacher)}`,
  );
  const ours = await measureOurs(m, backend);
  let peer: PeerOutcome | null = null;
  if (flags.peer === 'torch') {
    // The peer is another process on the same GPU: the memory our allocator still caches must go back first (on an
    // 80 GB card the Qwen pair's peer ran out of memory building its models beside our 74 GiB of cached blocks).
    (tf.backend() as { releaseCachedMemory?: () => void }).releaseCachedMemory?.();
    log(`peer: running ${flags.python} benchmarks/peer/kd_step.py on ${flags.threads} threads`);
    peer = await runPeer(m.shape, {
      python: flags.python,
      threads: flags.threads,
      steps: m.steps,
      warmup: m.warmup,
      configName: m.configName,
      timeoutMs: flags.timeoutMs,
      log,
      extraArgs: flags.extraArgs,
    });
    if (peer.ok)
      log(
        `peer: ${peer.result.tokensPerS.toFixed(1)} tokens/s (${peer.result.wallMsPerStep.toFixed(0)} ms/step, last loss ${peer.result.lastLoss.toFixed(4)})`,
      );
    else log(`peer: not measured: ${peer.reason}; reporting ours alone`);
  }
  const p = peer?.ok ? peer.result : null;
  return {
    backend: backend.chosen,
    backend_detail: [
      backend.detail,
      m.devices > 1 ? `${m.devices} data-parallel worker processes` : '',
      backend.precision !== '32' ? `precision ${backend.precision}` : '',
      m.recompute ? `recompute ${m.recompute}` : '',
    ]
      .filter(Boolean)
      .join('; '),
    devices: m.devices,
    shape: m.shape,
    tokens_per_step: tokensPerStep(m.shape),
    steps: m.steps,
    warmup: m.warmup,
    ours_tokens_per_s: ours.tokensPerS,
    peer_tokens_per_s: p ? p.tokensPerS : null,
    ratio: p && p.tokensPerS > 0 ? ours.tokensPerS / p.tokensPerS : null,
    peer: flags.peer === 'torch' ? 'torch' : 'none',
    peer_unavailable: peer && !peer.ok ? peer.reason : null,
    peer_mode: p ? p.mode : null,
    peer_oom: peer && !peer.ok ? peer.oom : null,
    peer_threads: p ? p.threads : null,
    stages: { ours: ours.stages, peer: p ? p.stagesMsPerStep : null },
    wall_ms_per_step: { ours: ours.wallMsPerStep, peer: p ? p.wallMsPerStep : null },
    memory: { ours: ours.memory, peer: p ? { peak_rss_bytes: p.peakRssBytes, peak_device_bytes: p.peakDeviceBytes } : null },
    last_loss: { ours: ours.lastLoss, peer: p ? p.lastLoss : null },
    torch: p ? p.torchVersion : null,
  };
}

async function main(argv: string[]): Promise<void> {
  const { flags } = parseFlags(argv, FLAGS, 'bench');
  if (flags.help) {
    process.stdout.write(usage('npm run bench --', 'Online KD throughput of this pipeline beside PyTorch on the same machine.', FLAGS) + '\n');
    return;
  }
  if (flags.regenerate) {
    const dir = resolve(ROOT, flags.results ?? 'benchmarks/results');
    log(`wrote ${writeResultsPage(dir).join(', ')}`);
    return;
  }
  const configName = flags.config ?? 'S';
  const devices = flags.devices ?? 1;
  const base = benchShape(configName);
  // Shell-quoted, so that the recorded command can be pasted back (--peer_args "--device cuda" keeps its quotes).
  const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `"${a.replace(/(["\\$`])/g, '\\$1')}"`);
  const command = `npm run bench -- ${argv.map(quote).join(' ')}`.trim();
  const runId = new Date().toISOString();
  const resultsDir = resolve(ROOT, flags.results ?? 'benchmarks/results');
  const backend = await selectBackend((flags.backend ?? 'auto') as BackendChoice, { log, precision: flags.precision as Precision });
  const peerFlags = {
    peer: flags.peer ?? 'torch',
    python: flags.python ?? DEFAULT_PYTHON,
    threads: flags.threads ?? 2,
    timeoutMs: (flags.peer_timeout_s ?? 3600) * 1000,
    extraArgs: flags.peer_args ? flags.peer_args.split(/\s+/).filter(Boolean) : [],
  };

  const recompute = (flags.recompute_granularity ?? null) as RecomputeGranularity;
  const points: { name: string; axis?: BenchRecord['axis']; x?: number; m: Measure }[] = flags.scaling
    ? scalingPoints(base, flags.steps ?? 2, flags.warmup ?? 1).map((p) => ({
        name: `${configName} ${p.axis}=${p.x}`,
        axis: p.axis,
        x: p.x,
        m: { configName: `${configName} ${p.axis}=${p.x}`, shape: p.shape, steps: p.shape.steps, warmup: p.shape.warmup, devices, recompute },
      }))
    : [{ name: configName, m: { configName, shape: base, steps: flags.steps ?? base.steps, warmup: flags.warmup ?? base.warmup, devices, recompute } }];

  const records: BenchRecord[] = [];
  for (const pt of points) {
    const loadBefore = loadavg()[0];
    const got = await measure(pt.m, backend, peerFlags);
    const { torch, ...rest } = got;
    const record: BenchRecord = {
      kind: flags.scaling ? 'scaling' : 'config',
      date: new Date().toISOString(),
      run_id: runId,
      config: pt.name,
      ...(pt.axis ? { axis: pt.axis, x: pt.x } : {}),
      ...rest,
      machine: machineInfo(torch, loadBefore),
      command,
    };
    appendResult(resultsDir, record);
    records.push(record);
  }
  const written = writeResultsPage(resultsDir);
  log(`wrote ${join(resultsDir, 'results.jsonl')} and ${written.map((w) => w.replace(ROOT + '/', '')).join(', ')}`);

  process.stdout.write([...TABLE_HEADER, ...records.map(markdownRow)].join('\n') + '\n');
  if (flags.json) {
    const out = flags.scaling ? { mode: 'scaling', config: configName, backend: backend.chosen, command, points: records } : records[0];
    process.stdout.write(JSON.stringify(out) + '\n');
  }
}

main(process.argv.slice(2)).then(
  // The webgpu backend's Dawn handle keeps the process alive; the benchmark is done, so leave.
  () => process.exit(0),
  (e: unknown) => {
    log(`bench: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
