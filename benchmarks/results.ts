/**
 * One benchmark measurement as it is printed (--json), appended to results.jsonl and tabulated in the README.
 * Field names are snake_case because the record is read by people and by other tools as JSON.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchShape } from './configs.ts';
import type { Stage } from './stageClock.ts';

export interface Machine {
  cpu: string;
  cores: number;
  os: string;
  node: string;
  /** torch version of the peer, when it ran. */
  torch: string | null;
  /**
   * 1-minute load average before ours ran and after the peer finished: on a shared machine, a load above the core
   * count means other work took cycles from the measurement.
   */
  load_avg?: { before: number; after: number };
}

/** How the peer ran, from its own JSON line. */
export interface PeerMode {
  /** torch.compile of both models (the student's with its loss) and AdamW(fused=True); false: eager. */
  compiled: boolean;
  /** "cpu", or "cuda" and the device's name. */
  device: string;
  precision: string;
  /** "AdamW", "AdamW fused", or why fused was refused. */
  optimizer: string;
  /** Seconds the first (warm-up) step took beyond a measured one: compilation, excluded from tokens/s. */
  compile_s: number | null;
}

/** The peer ran out of device memory: where, and how much it held by then. */
export interface PeerOom {
  /** "building the models", "step 1 (warm-up)", ... */
  where: string;
  peak_device_bytes: number | null;
  device_total_bytes: number | null;
  /** The first line of torch's message. */
  error: string;
  compiled: boolean;
}

export interface BenchRecord {
  kind: 'config' | 'scaling';
  date: string;
  /** The invocation's start time: the points of one --scaling sweep share it. */
  run_id: string;
  /** The configuration name; a scaling point adds its axis and value ("S seq=512"). */
  config: string;
  axis?: 'seq' | 'vocab' | 'width';
  x?: number;
  backend: string;
  backend_detail: string;
  /**
   * Processes that ran ours: 1 in the bench's own process (with per-stage times), N > 1 as N data-parallel
   * workers through the launcher of `distill run --devices N`. Absent in records from before the flag: 1.
   */
  devices?: number;
  shape: BenchShape;
  tokens_per_step: number;
  steps: number;
  warmup: number;
  ours_tokens_per_s: number;
  peer_tokens_per_s: number | null;
  /** ours / peer; null when the peer did not run. */
  ratio: number | null;
  peer: 'torch' | 'none';
  /** Why the peer has no figure, when it has none. */
  peer_unavailable: string | null;
  /** Eager or compiled, device and precision, as the peer reported them (absent in records from before: eager). */
  peer_mode?: PeerMode | null;
  /** Set when the peer ran out of device memory on this shape (absent in records from before). */
  peer_oom?: PeerOom | null;
  peer_threads: number | null;
  machine: Machine;
  /**
   * Busy milliseconds per step of each stage ("student fwd+bwd" is forward, loss and backward under one tape);
   * null for ours with devices > 1 (the stages run in the workers, unseen by the bench).
   */
  stages: { ours: Record<Stage, number> | null; peer: Record<Stage, number> | null };
  wall_ms_per_step: { ours: number; peer: number | null };
  memory: {
    /**
     * With devices > 1: the sum of the workers' peak RSS (null where /proc is unreadable), no tf figures.
     * peak_device_bytes: the cuda allocator's peak of bytes held by tensors over the whole run (null on other
     * backends; absent in records from before): the figure to set beside the peer's.
     */
    ours: { peak_rss_bytes: number | null; peak_tf_bytes: number | null; peak_tf_tensors: number | null; peak_device_bytes?: number | null };
    /** peak_device_bytes: torch.cuda.max_memory_allocated() (null off cuda; absent in records from before). */
    peer: { peak_rss_bytes: number; peak_device_bytes?: number | null } | null;
  };
  last_loss: { ours: number; peer: number | null };
  command: string;
}

export const RESULTS_FILE = 'results.jsonl';

export function appendResult(dir: string, r: BenchRecord): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, RESULTS_FILE);
  appendFileSync(path, JSON.stringify(r) + '\n');
  return path;
}

/** Every record in the file; a torn last line (a run killed mid-write) is skipped rather than failing the README. */
export function readResults(dir: string): BenchRecord[] {
  const path = join(dir, RESULTS_FILE);
  if (!existsSync(path)) return [];
  const out: BenchRecord[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as BenchRecord);
    } catch {
      // Keep going: one bad line must not hide the other measurements.
    }
  }
  return out;
}
