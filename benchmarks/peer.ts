/**
 * The PyTorch peer, run in the same invocation as ours: benchmarks/peer/kd_step.py in a child process, given the
 * whole shape as JSON so that a scaling point needs no entry in configs.json. It runs after ours, never beside
 * it: both would fight over the same cores and each figure would be wrong.
 *
 * A peer that cannot start (no python3, no torch) is not an error of the benchmark: the reason is returned and
 * printed, and ours is reported alone (ratio null). A peer that runs out of device memory says so in its last JSON
 * line ({"oom": true, ...}, exit 3): the outcome carries that, so the record can say the shape did not fit the peer.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { resolveBenchShape, type BenchShape } from './configs.ts';
import type { PeerMode, PeerOom } from './results.ts';
import type { Stage } from './stageClock.ts';

export const DEFAULT_PYTHON = '/usr/bin/python3';
export const PEER_SCRIPT = fileURLToPath(new URL('./peer/kd_step.py', import.meta.url));

export interface PeerOptions {
  python: string;
  threads: number;
  /** More arguments for kd_step.py, e.g. --device cuda --precision bf16 on the device machine. */
  extraArgs?: string[];
  steps: number;
  warmup: number;
  configName: string;
  /** Give up after this long (a wedged peer must not hang the benchmark). */
  timeoutMs: number;
  log?: (line: string) => void;
}

export interface PeerResult {
  tokensPerS: number;
  wallMsPerStep: number;
  stagesMsPerStep: Record<Stage, number>;
  peakRssBytes: number;
  /** torch.cuda.max_memory_allocated() over the whole run, warm-up included; null off cuda. */
  peakDeviceBytes: number | null;
  lastLoss: number;
  torchVersion: string;
  threads: number;
  /** Eager or compiled, where and in which precision, as the peer itself reports it. */
  mode: PeerMode;
  /** Parameters the peer built, each side (the embedding counted once where tied). */
  params: { student: number; teacher: number } | null;
}

export type PeerOutcome =
  | { ok: true; result: PeerResult; command: string }
  /** oom: the peer ran out of device memory (null for any other failure). */
  | { ok: false; reason: string; command: string; oom: PeerOom | null };

type PeerJson = Record<string, unknown> & { tokens_per_s: number };

function isPeerJson(v: unknown): v is PeerJson {
  return typeof v === 'object' && v !== null && typeof (v as { tokens_per_s?: unknown }).tokens_per_s === 'number';
}

const numberOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const gib = (b: number | null): string => (b === null ? '?' : `${(b / 2 ** 30).toFixed(1)} GiB`);

/** The peer's out-of-memory line ({"oom": true, ...}), or null when the line is something else. */
export function parsePeerOom(line: string): PeerOom | null {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || (v as { oom?: unknown }).oom !== true) return null;
  const o = v as Record<string, unknown>;
  return {
    where: String(o.where ?? '?'),
    peak_device_bytes: numberOrNull(o.peak_device_bytes),
    device_total_bytes: numberOrNull(o.device_total_bytes),
    error: String(o.error ?? ''),
    compiled: o.compiled === true,
  };
}

/** The peer's result line, its optional fields read as absent (null) when an older kd_step.py left them out. */
export function parsePeerResult(parsed: PeerJson): PeerResult {
  const student = numberOrNull(parsed.student_params);
  const teacher = numberOrNull(parsed.teacher_params);
  return {
    tokensPerS: parsed.tokens_per_s,
    wallMsPerStep: Number(parsed.wall_ms_per_step),
    stagesMsPerStep: parsed.stages_ms_per_step as Record<Stage, number>,
    peakRssBytes: Number(parsed.peak_rss_bytes),
    peakDeviceBytes: numberOrNull(parsed.peak_device_bytes),
    lastLoss: Number(parsed.last_loss),
    torchVersion: String(parsed.torch_version),
    threads: Number(parsed.threads),
    mode: {
      compiled: parsed.compiled === true,
      device: String(parsed.device ?? 'cpu'),
      precision: String(parsed.precision ?? 'fp32'),
      optimizer: String(parsed.optimizer ?? 'AdamW'),
      compile_s: numberOrNull(parsed.compile_s),
    },
    params: student !== null && teacher !== null ? { student, teacher } : null,
  };
}

export function peerArgs(shape: BenchShape, o: PeerOptions): string[] {
  return [
    PEER_SCRIPT,
    '--config',
    o.configName,
    '--spec',
    // Resolved: the peer builds exactly the sides that ours builds, with no default of its own.
    JSON.stringify(resolveBenchShape(shape)),
    '--steps',
    String(o.steps),
    '--warmup',
    String(o.warmup),
    '--threads',
    String(o.threads),
    ...(o.extraArgs ?? []),
  ];
}

export function runPeer(shape: BenchShape, o: PeerOptions): Promise<PeerOutcome> {
  const args = peerArgs(shape, o);
  const command = `${o.python} ${args.map((a) => (/^[\w./:=+-]+$/.test(a) ? a : `'${a}'`)).join(' ')}`;
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let settled = false;
    const done = (out: PeerOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(out);
    };
    const child = spawn(o.python, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      // One BLAS pool of the requested size; OpenMP/OpenBLAS otherwise start one thread per core on their own.
      env: { ...process.env, OMP_NUM_THREADS: String(o.threads), OPENBLAS_NUM_THREADS: String(o.threads), MKL_NUM_THREADS: String(o.threads) },
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      done({ ok: false, reason: `the peer ran past ${Math.round(o.timeoutMs / 1000)} s and was stopped`, command, oom: null });
    }, o.timeoutMs);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      for (const line of d.toString().split('\n')) if (line.trim()) o.log?.(`peer: ${line}`);
    });
    child.on('error', (e) => done({ ok: false, reason: `cannot start ${o.python}: ${e.message}`, command, oom: null }));
    child.on('close', (code, signal) => {
      const lastLine = stdout.trim().split('\n').pop() ?? '';
      const oom = parsePeerOom(lastLine);
      if (oom) {
        const reason = `the peer ran out of device memory in ${oom.where} (peak ${gib(oom.peak_device_bytes)} of ${gib(oom.device_total_bytes)}): ${oom.error}`;
        return done({ ok: false, reason, command, oom });
      }
      if (code !== 0) {
        const why = stderr.trim().split('\n').slice(-3).join(' | ') || `exit ${code ?? signal}`;
        const hint = /No module named ['"]?torch/.test(stderr) ? ' (install it: apt-get install -y python3-torch libopenblas0-pthread)' : '';
        return done({ ok: false, reason: `the peer failed: ${why}${hint}`, command, oom: null });
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(lastLine);
      } catch {
        return done({ ok: false, reason: `the peer printed no JSON line (last line: ${lastLine.slice(0, 200)})`, command, oom: null });
      }
      if (!isPeerJson(parsed)) return done({ ok: false, reason: `the peer's JSON has no tokens_per_s: ${lastLine.slice(0, 200)}`, command, oom: null });
      done({ ok: true, command, result: parsePeerResult(parsed) });
    });
  });
}
