/**
 * Crash-anywhere harness: runs a small distillation (or a teacher-cache write) as a child process, kills it with
 * SIGKILL at chosen points, reruns the same command until it completes, and checks after every kill that nothing
 * on disk reads as complete without being complete. Used by test/reliability/killResume.test.ts (a few points, CI)
 * and scripts/killResume.ts (the long version).
 *
 * Kill points are reproducible from a seed: the kind, the ordinal of the event within the attempt and a delay in
 * milliseconds after it are drawn from a seeded PRNG. Events are seen through fs.watch (inotify) on the
 * checkpoint / cache folder, so a kill lands inside a write window of a few milliseconds rather than by luck.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { tableFromIPC } from 'apache-arrow';
import { SafetensorsReader } from '../../src/io/safetensors.ts';
import { readMetrics } from '../../src/logging/metricsLog.ts';
import { parsePartFileName } from '../../src/cache/layout.ts';
import { indexPart } from '../../src/io/teacherCache.ts';
import { ROOT, fixture } from '../helpers/fixtures.ts';

/** Where a kill lands. `time`: ms after spawn; `step`: after the n-th step record of the attempt; the others: after the n-th appearance of a temporary. */
export type KillKind = 'time' | 'step' | 'student-tmp' | 'student-done' | 'step-tmp' | 'step-dir' | 'cache-part';
export interface KillPoint {
  kind: KillKind;
  /** 1-based ordinal of the event within the attempt (time: unused). */
  n: number;
  /** Delay after the event, ms (time: ms after spawn). */
  delayMs: number;
}

export const MAX_STEPS = 8;
export const CACHE_SAMPLES = 16;

/** mulberry32: a tiny seeded PRNG, enough for choosing kill points reproducibly. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TRAIN_KINDS: KillKind[] = ['time', 'step', 'student-tmp', 'student-done', 'step-tmp', 'step-dir'];

/** A training kill point for an attempt that has `remaining` steps (and as many checkpoints) left to do. */
export function drawTrainPoint(rng: () => number, remaining: number): KillPoint {
  const kind = TRAIN_KINDS[Math.floor(rng() * TRAIN_KINDS.length)];
  // Startup (tsx, tfjs, models) takes ~2-4 s on the 2-core machine; time points aim at it and the first steps.
  if (kind === 'time') return { kind, n: 0, delayMs: 1500 + Math.floor(rng() * 2500) };
  const n = 1 + Math.floor(rng() * Math.max(1, remaining - 1));
  // Mostly immediate kills (inside the write), sometimes a little later (between writes, inside the next step).
  const delayMs = rng() < 0.6 ? 0 : Math.floor(rng() * 40);
  return { kind, n, delayMs };
}

export function drawCachePoint(rng: () => number, remainingParts: number): KillPoint {
  return { kind: 'cache-part', n: 1 + Math.floor(rng() * Math.max(1, remainingParts - 1)), delayMs: rng() < 0.7 ? 0 : Math.floor(rng() * 20) };
}

export const describePoint = (p: KillPoint): string => (p.kind === 'time' ? `time +${p.delayMs} ms` : `${p.kind} #${p.n} +${p.delayMs} ms`);

export function trainArgs(logDir: string, name: string, backend = 'cpu'): string[] {
  return [
    'run',
    '--name',
    name,
    '--log_dir',
    logDir,
    '--student_path',
    fixture('llama-student'),
    '--teacher_path',
    fixture('llama-teacher'),
    '--data_paths',
    fixture('megatron', 'small_text_document'),
    '--seq_length',
    '16',
    '--gbs',
    '2',
    '--mbs',
    '1',
    '--max_steps',
    String(MAX_STEPS),
    '--save_interval',
    '1',
    '--val_check_interval',
    '0',
    '--lr',
    '1e-3',
    '--min_lr',
    '1e-4',
    '--warmup_steps',
    '1',
    '--backend',
    backend,
  ];
}

export function cacheArgs(out: string, backend = 'cpu'): string[] {
  return [
    'cache-teacher',
    '--teacher_path',
    fixture('llama-teacher'),
    '--data_paths',
    fixture('megatron', 'small_text_document'),
    '--seq_length',
    '16',
    '--out',
    out,
    '--method',
    'topk',
    '--top_k',
    '8',
    '--num_samples',
    String(CACHE_SAMPLES),
    '--part_samples',
    '2',
    '--batch_samples',
    '2',
    '--backend',
    backend,
  ];
}

export interface Attempt {
  code: number | null;
  killed: boolean;
  stderr: string;
}

/**
 * Runs `distill <args>` once; with a kill point, SIGKILLs it when the point is reached. `watchDir` is the folder
 * whose temporaries mark checkpoint / part writes; `runDir` holds metrics.jsonl (step points).
 */
export function attempt(args: string[], point: KillPoint | null, dirs: { watchDir: string; runDir?: string }): Promise<Attempt> {
  mkdirSync(dirs.watchDir, { recursive: true });
  const baseSteps = dirs.runDir ? stepRecords(dirs.runDir) : 0;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args], {
      cwd: ROOT,
      env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    let killed = false;
    const watchers: FSWatcher[] = [];
    const timers: NodeJS.Timeout[] = [];
    const kill = (): void => {
      if (killed || child.exitCode !== null) return;
      killed = child.kill('SIGKILL');
    };
    const fire = (delay: number): void => {
      if (delay <= 0) kill();
      else timers.push(setTimeout(kill, delay));
    };
    if (point) {
      let seen = 0;
      const matches = (f: string): boolean => {
        switch (point.kind) {
          case 'student-tmp':
            return f.startsWith('..student-');
          case 'student-done':
            return f.startsWith('.student-');
          case 'step-tmp':
            return f.startsWith('.step-');
          // A step-* name appearing (the rename into place) or disappearing (an old checkpoint pruned).
          case 'step-dir':
            return /^step-\d+$/.test(f);
          case 'cache-part':
            return f.startsWith('.part-') && f.includes('.tmp-');
          default:
            return false;
        }
      };
      const seenNames = new Set<string>();
      if (point.kind === 'time') fire(point.delayMs);
      else if (point.kind === 'step') {
        const poll = setInterval(() => {
          if (dirs.runDir && stepRecords(dirs.runDir) - baseSteps >= point.n) {
            clearInterval(poll);
            fire(point.delayMs);
          }
        }, 2);
        timers.push(poll);
      } else {
        watchers.push(
          watch(dirs.watchDir, (_ev, name) => {
            const f = name ? String(name) : '';
            // A name is counted once: fs.watch reports both its creation and its later rename away.
            if (!matches(f) || seenNames.has(f)) return;
            seenNames.add(f);
            if (++seen === point.n) fire(point.delayMs);
          }),
        );
      }
    }
    child.on('error', reject);
    child.on('exit', (code) => {
      for (const w of watchers) w.close();
      for (const t of timers) {
        clearTimeout(t);
        clearInterval(t);
      }
      resolve({ code, killed: killed && code === null, stderr });
    });
  });
}

function stepRecords(runDir: string): number {
  const p = join(runDir, 'metrics.jsonl');
  if (!existsSync(p)) return 0;
  return readFileSync(p, 'utf8')
    .split('\n')
    .filter((l) => l.includes('"step"')).length;
}

/**
 * Every `step-*` directory must load whole: state.json parses and names its step, optimizer.safetensors and
 * student/model.safetensors open and every tensor reads, student/config.json parses. Dot-names are temporaries,
 * never read by a resume; they are counted. Returns the problems found (empty: nothing reads as complete wrongly).
 */
export function scanCheckpoints(runDir: string): { problems: string[]; complete: number; temporaries: number } {
  const root = join(runDir, 'checkpoints');
  const problems: string[] = [];
  let complete = 0;
  let temporaries = 0;
  if (!existsSync(root)) return { problems, complete, temporaries };
  for (const name of readdirSync(root)) {
    if (name.startsWith('.')) {
      temporaries++;
      continue;
    }
    const m = /^step-(\d+)$/.exec(name);
    if (!m) {
      problems.push(`unexpected entry ${name}`);
      continue;
    }
    const dir = join(root, name);
    try {
      const state = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as { step: number };
      if (state.step !== Number(m[1])) throw new Error(`state.json says step ${state.step}`);
      for (const f of ['optimizer.safetensors', join('student', 'model.safetensors')]) readAllTensors(join(dir, f));
      JSON.parse(readFileSync(join(dir, 'student', 'config.json'), 'utf8'));
      complete++;
    } catch (e) {
      problems.push(`${name}: ${(e as Error).message}`);
    }
  }
  // metrics.jsonl may end in a torn line after a kill; readMetrics must still read it.
  try {
    if (existsSync(join(runDir, 'metrics.jsonl'))) readMetrics(runDir);
  } catch (e) {
    problems.push(`metrics.jsonl: ${(e as Error).message}`);
  }
  return { problems, complete, temporaries };
}

export function readAllTensors(path: string): Map<string, Float32Array | Int32Array> {
  const r = SafetensorsReader.open(path);
  try {
    return new Map(r.names().map((n) => [n, r.read(n).data]));
  } finally {
    r.close();
  }
}

/** Every file with a part name must index (framing, footer, metadata) and decode whole with the right row count. */
export function scanCache(dir: string): { problems: string[]; complete: number; temporaries: number } {
  const problems: string[] = [];
  let complete = 0;
  let temporaries = 0;
  if (!existsSync(dir)) return { problems, complete, temporaries };
  for (const name of readdirSync(dir)) {
    if (name.startsWith('.')) {
      temporaries++;
      continue;
    }
    const range = parsePartFileName(name);
    if (!range) continue;
    try {
      const idx = indexPart(dir, name);
      const table = tableFromIPC(readFileSync(join(dir, name)));
      const want = (range.end - range.start) * idx.fp.seqLength;
      if (table.numRows !== want) throw new Error(`${table.numRows} rows, expected ${want}`);
      complete++;
    } catch (e) {
      problems.push(`${name}: ${(e as Error).message}`);
    }
  }
  return { problems, complete, temporaries };
}

export function maxDiffStudents(a: string, b: string): number {
  const wa = readAllTensors(join(a, 'model.safetensors'));
  const wb = readAllTensors(join(b, 'model.safetensors'));
  if (wa.size !== wb.size) return Infinity;
  let m = 0;
  for (const [k, x] of wa) {
    const y = wb.get(k);
    if (!y || y.length !== x.length) return Infinity;
    for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  }
  return m;
}

/** Parts byte for byte: a resumed cache must equal an uninterrupted one. */
export function sameCacheParts(a: string, b: string): string[] {
  const names = (d: string): string[] =>
    readdirSync(d)
      .filter((n) => parsePartFileName(n))
      .sort();
  const na = names(a);
  const nb = names(b);
  const diffs: string[] = [];
  if (na.join() !== nb.join()) diffs.push(`part lists differ: ${na.length} vs ${nb.length}`);
  for (const n of na.filter((x) => nb.includes(x))) {
    if (statSync(join(a, n)).size !== statSync(join(b, n)).size || !readFileSync(join(a, n)).equals(readFileSync(join(b, n)))) diffs.push(`${n} differs`);
  }
  return diffs;
}

export interface ChainReport {
  kills: { point: string; complete: number; temporaries: number; problems: string[] }[];
  missed: string[];
  attempts: number;
  maxDiff: number;
  problems: string[];
  /**
   * Steps missing from metrics.jsonl after the resumed run. Known, not a checkpoint-integrity failure: the pipeline
   * writes a step's checkpoint before its metrics record (checkpointSink precedes metricsTap), so a kill between
   * the two resumes after that step and its record is never written.
   */
  metricsGaps: number[];
}

/**
 * One run directory, killed at each point drawn in turn (a point not reached before the run ends is "missed")
 * until `kills` kills landed or the run completed; then rerun to completion and compared with `reference`.
 */
export async function trainChain(logDir: string, name: string, reference: string, rng: () => number, kills: number, backend = 'cpu'): Promise<ChainReport> {
  const runDir = join(logDir, name);
  const watchDir = join(runDir, 'checkpoints');
  const report: ChainReport = { kills: [], missed: [], attempts: 0, maxDiff: NaN, problems: [], metricsGaps: [] };
  for (;;) {
    const remaining = MAX_STEPS - latestStep(watchDir);
    const point = report.kills.length < kills && remaining > 0 ? drawTrainPoint(rng, remaining) : null;
    const a = await attempt(trainArgs(logDir, name, backend), point, { watchDir, runDir });
    report.attempts++;
    if (a.killed && point) {
      const s = scanCheckpoints(runDir);
      report.kills.push({ point: describePoint(point), complete: s.complete, temporaries: s.temporaries, problems: s.problems });
      report.problems.push(...s.problems.map((p) => `after ${describePoint(point)}: ${p}`));
      continue;
    }
    if (a.code !== 0) {
      report.problems.push(`attempt ${report.attempts} exited ${a.code}: ${a.stderr.slice(-600)}`);
      return report;
    }
    if (point) report.missed.push(describePoint(point));
    break;
  }
  report.maxDiff = maxDiffStudents(reference, join(runDir, 'student'));
  const steps = readMetrics(runDir)
    .filter((r) => r.split !== 'valid')
    .map((r) => r.step);
  if (steps.some((x, i) => i > 0 && x <= steps[i - 1])) report.problems.push(`metrics.jsonl steps out of order: ${steps.join(',')}`);
  // Steps are numbered 1..N in metrics.jsonl, as on the console and in the checkpoint names.
  report.metricsGaps = [...Array(MAX_STEPS).keys()].map((k) => k + 1).filter((s) => !steps.includes(s));
  return report;
}

export async function cacheChain(out: string, reference: string, rng: () => number, kills: number, backend = 'cpu'): Promise<ChainReport> {
  const report: ChainReport = { kills: [], missed: [], attempts: 0, maxDiff: NaN, problems: [], metricsGaps: [] };
  const totalParts = CACHE_SAMPLES / 2;
  for (;;) {
    const remaining = totalParts - scanCache(out).complete;
    const point = report.kills.length < kills && remaining > 0 ? drawCachePoint(rng, remaining) : null;
    const a = await attempt(cacheArgs(out, backend), point, { watchDir: out });
    report.attempts++;
    if (a.killed && point) {
      const s = scanCache(out);
      report.kills.push({ point: describePoint(point), complete: s.complete, temporaries: s.temporaries, problems: s.problems });
      report.problems.push(...s.problems.map((p) => `after ${describePoint(point)}: ${p}`));
      continue;
    }
    if (a.code !== 0) {
      report.problems.push(`attempt ${report.attempts} exited ${a.code}: ${a.stderr.slice(-600)}`);
      return report;
    }
    if (point) report.missed.push(describePoint(point));
    break;
  }
  const diffs = sameCacheParts(reference, out);
  report.problems.push(...diffs);
  report.maxDiff = diffs.length === 0 ? 0 : Infinity;
  return report;
}

function latestStep(checkpoints: string): number {
  if (!existsSync(checkpoints)) return 0;
  return Math.max(
    0,
    ...readdirSync(checkpoints)
      .map((n) => /^step-(\d+)$/.exec(n))
      .filter((m) => m !== null)
      .map((m) => Number(m[1])),
  );
}

/** The uninterrupted runs everything is compared with. */
export async function referenceTrain(logDir: string, backend = 'cpu'): Promise<string> {
  const a = await attempt(trainArgs(logDir, 'reference', backend), null, { watchDir: join(logDir, 'reference', 'checkpoints') });
  if (a.code !== 0) throw new Error(`reference run failed: ${a.stderr.slice(-800)}`);
  return join(logDir, 'reference', 'student');
}

export async function referenceCache(out: string, backend = 'cpu'): Promise<string> {
  const a = await attempt(cacheArgs(out, backend), null, { watchDir: out });
  if (a.code !== 0) throw new Error(`reference cache failed: ${a.stderr.slice(-800)}`);
  return out;
}
