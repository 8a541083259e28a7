/**
 * Append-only JSONL metrics: `<dir>/metrics.jsonl`, one JSON object per line.
 *
 * Lines are appended with plain writes and fsynced every `fsyncEvery` records or `fsyncIntervalMs`,
 * whichever comes first, so a crash loses at most a few seconds of metrics and at worst leaves one torn
 * last line, which the reader ignores. On resume from a checkpoint at step S, `truncateAfter(S)` drops
 * every record past S so that the resumed run does not log those steps a second time.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomicWrite.ts';
import { FormatError } from '../errors.ts';

export const METRICS_FILE = 'metrics.jsonl';

/**
 * One optimizer step. `step` counts the optimizer steps done, 1..N: the number the console shows (`train 20/20`) and
 * the checkpoint is named after (`step-000020`). Optional fields are absent when the run does not compute them.
 */
export interface TrainRecord {
  split?: 'train';
  step: number;
  /** The objective the optimizer minimised: (1 − α)·CE + α·KD, so KD alone at kd_ratio 1 and CE alone in pretraining. */
  loss: number;
  /** The KD divergence to the teacher (times τ² when scaled); absent without a teacher. */
  kd_loss?: number;
  /** The student's next-token cross-entropy; present when the loss computes it (kd_ratio < 1, or pretraining). */
  ce_loss?: number;
  /** Global gradient norm before clipping. */
  grad_norm?: number;
  lr?: number;
  tokens_per_s?: number;
  /** Seconds since the epoch; filled in by the writer when absent. */
  time?: number;
}

/**
 * One evaluation on held-out data after `step` optimizer steps (numbered as TrainRecord's). Its names say what each
 * number is: validation reports the student's next-token CE in every run, distilled or not, so that runs compare
 * on one axis (and against the teacher's CE); it is not the training `loss`.
 */
export interface ValidRecord {
  split: 'valid';
  step: number;
  /** The student's next-token cross-entropy on the validation data, nats per token. */
  val_ce_loss: number;
  /** exp(val_ce_loss). */
  val_ppl?: number;
  /** The KD divergence to the teacher on the validation data, without the τ² factor; absent without a teacher. */
  val_kd_loss?: number;
  time?: number;
}

export type MetricsRecord = TrainRecord | ValidRecord;

export function isValid(r: MetricsRecord): r is ValidRecord {
  return r.split === 'valid';
}

export interface MetricsLogOptions {
  /** fsync after this many appended records (default 50). */
  fsyncEvery?: number;
  /** ... or when this long has passed since the last fsync (default 5000 ms). */
  fsyncIntervalMs?: number;
  /** On resume: drop records with step > this before appending (see truncateMetricsAfter). */
  resumeAfterStep?: number;
  /** Clock in ms, injectable for tests. */
  now?: () => number;
}

const NUMERIC_FIELDS = [
  'step',
  'loss',
  'kd_loss',
  'ce_loss',
  'grad_norm',
  'lr',
  'tokens_per_s',
  'ppl',
  'val_ce_loss',
  'val_kd_loss',
  'val_ppl',
  'time',
] as const;

/** Validation fields as files written before the val_ names call them (`loss` was the student's CE there). */
const LEGACY_VALID_FIELDS = [
  ['loss', 'val_ce_loss'],
  ['kd_loss', 'val_kd_loss'],
  ['ppl', 'val_ppl'],
] as const;

export class MetricsLog {
  readonly path: string;
  private fd: number;
  private unsynced = 0;
  private lastSync: number;
  private readonly lastStep = new Map<string, number>();
  private readonly fsyncEvery: number;
  private readonly fsyncIntervalMs: number;
  private readonly now: () => number;

  private constructor(path: string, opts: MetricsLogOptions) {
    this.path = path;
    this.fsyncEvery = opts.fsyncEvery ?? 50;
    this.fsyncIntervalMs = opts.fsyncIntervalMs ?? 5000;
    this.now = opts.now ?? Date.now;
    // Seed the per-split step guard from what is already on disk, so a resume that forgot to
    // truncate fails loudly at the first duplicate instead of silently writing it.
    if (existsSync(path)) {
      for (const r of readMetrics(path)) this.lastStep.set(splitOf(r), Math.max(this.lastStep.get(splitOf(r)) ?? -Infinity, r.step));
    }
    this.fd = openSync(path, 'a');
    this.lastSync = this.now();
  }

  /** Opens (creating if needed) `<dir>/metrics.jsonl` for appending. */
  static open(dir: string, opts: MetricsLogOptions = {}): MetricsLog {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, METRICS_FILE);
    if (opts.resumeAfterStep !== undefined) truncateMetricsAfter(path, opts.resumeAfterStep);
    else if (existsSync(path)) dropTornTail(path);
    return new MetricsLog(path, opts);
  }

  /** The last step logged for a split ('train' or 'valid'), or undefined. */
  lastStepOf(split: 'train' | 'valid'): number | undefined {
    return this.lastStep.get(split);
  }

  append(rec: MetricsRecord): void {
    if (this.fd < 0) throw new Error(`MetricsLog ${this.path} is closed`);
    if (!Number.isInteger(rec.step) || rec.step < 0) throw new Error(`metrics step must be a non-negative integer, got ${rec.step}`);
    const split = splitOf(rec);
    const prev = this.lastStep.get(split);
    if (prev !== undefined && rec.step <= prev) {
      throw new Error(`${this.path}: ${split} step ${rec.step} is not after the last logged step ${prev}; truncate on resume`);
    }
    this.lastStep.set(split, rec.step);
    const withTime = rec.time === undefined ? { ...rec, time: this.now() / 1000 } : rec;
    const line = Buffer.from(JSON.stringify(withTime) + '\n', 'utf8');
    let off = 0;
    while (off < line.length) off += writeSync(this.fd, line, off, line.length - off);
    this.unsynced++;
    if (this.unsynced >= this.fsyncEvery || this.now() - this.lastSync >= this.fsyncIntervalMs) this.sync();
  }

  sync(): void {
    if (this.fd < 0 || this.unsynced === 0) return;
    fsyncSync(this.fd);
    this.unsynced = 0;
    this.lastSync = this.now();
  }

  close(): void {
    if (this.fd < 0) return;
    this.sync();
    closeSync(this.fd);
    this.fd = -1;
  }
}

function splitOf(r: MetricsRecord): 'train' | 'valid' {
  return r.split === 'valid' ? 'valid' : 'train';
}

/**
 * Parses one line. JSON has no NaN/Infinity, so JSON.stringify writes them as null; they are read back
 * as NaN, which keeps a diverged loss visible instead of turning it into a missing field.
 */
function parseLine(path: string, line: string, lineNo: number): MetricsRecord {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new FormatError(path, `line ${lineNo} is not JSON: ${line.slice(0, 80)}`);
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new FormatError(path, `line ${lineNo} is not a JSON object`);
  const rec = obj as Record<string, unknown>;
  for (const k of NUMERIC_FIELDS) {
    if (rec[k] === null) rec[k] = NaN;
    else if (rec[k] !== undefined && typeof rec[k] !== 'number') throw new FormatError(path, `line ${lineNo}: field ${k} is not a number`);
  }
  if (typeof rec.step !== 'number') throw new FormatError(path, `line ${lineNo} has no step`);
  if (rec.split !== undefined && rec.split !== 'train' && rec.split !== 'valid') {
    throw new FormatError(path, `line ${lineNo}: split must be 'train' or 'valid', got ${JSON.stringify(rec.split)}`);
  }
  if (rec.split === 'valid' && rec.val_ce_loss === undefined) {
    // An older run's file: read under today's names, so its report and a resumed run's records agree.
    for (const [old, now] of LEGACY_VALID_FIELDS) {
      if (rec[old] !== undefined) rec[now] = rec[old];
      delete rec[old];
    }
    delete rec.ce_loss;
  }
  return rec as unknown as MetricsRecord;
}

/**
 * Splits a file into complete lines. A last line without '\n' is a write torn by a crash: it is
 * reported separately so the reader can ignore it and the writer can cut it off.
 */
function splitLines(text: string): { lines: string[]; torn: boolean } {
  const parts = text.split('\n');
  const last = parts.pop() ?? '';
  return { lines: parts, torn: last.length > 0 };
}

/** Reads `metrics.jsonl` (a file path or the run directory). Blank lines and a torn last line are skipped. */
export function readMetrics(pathOrDir: string): MetricsRecord[] {
  const path = pathOrDir.endsWith('.jsonl') ? pathOrDir : join(pathOrDir, METRICS_FILE);
  const { lines } = splitLines(readFileSync(path, 'utf8'));
  const out: MetricsRecord[] = [];
  lines.forEach((line, i) => {
    if (line.trim().length > 0) out.push(parseLine(path, line, i + 1));
  });
  return out;
}

/**
 * Keeps only records with step <= `step` (and drops a torn last line), rewriting the file atomically
 * so a crash during the truncation leaves the old file, never a half-written one.
 * Returns the number of records removed. A missing file is not an error: there is nothing to resume.
 */
export function truncateMetricsAfter(path: string, step: number): number {
  if (!existsSync(path)) return 0;
  const { lines, torn } = splitLines(readFileSync(path, 'utf8'));
  const kept: string[] = [];
  let removed = 0;
  lines.forEach((line, i) => {
    if (line.trim().length === 0) return;
    if (parseLine(path, line, i + 1).step <= step) kept.push(line);
    else removed++;
  });
  if (removed > 0 || torn) writeFileAtomic(path, kept.map((l) => l + '\n').join(''));
  return removed;
}

function dropTornTail(path: string): void {
  const text = readFileSync(path, 'utf8');
  if (splitLines(text).torn) writeFileAtomic(path, text.slice(0, text.lastIndexOf('\n') + 1));
}
