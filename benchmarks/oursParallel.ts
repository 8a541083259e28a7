/**
 * Our side of the benchmark with `--devices N` (N > 1): the same online-KD step, run as N data-parallel worker
 * processes through the project's own entry point, `run(recipe)` from pipelines/run.ts, which forks the workers
 * through src/runtime/launcher.ts exactly as `distill run --devices N` does (each worker streams the pipeline of
 * pipelines/distill.ts as one rank; gradients are summed by the ring all-reduce).
 *
 * The work is the single-process path's: the same random-init teacher and student (buildModel, same seed), written
 * to a temporary Hugging Face directory for the workers to load; random token windows, written as a temporary
 * Megatron dataset; global batch = the shape's batch (each rank takes batch / N of it, one micro-batch a step);
 * forward KL at τ = 1 without τ², clipping at 1.0, AdamW at a constant lr 1e-4.
 *
 * Timing follows the single-process path: tokens of the measured steps (the whole global batch, every rank), over
 * the wall time from the end of the last warm-up step to the end of the last step, as the launcher sees rank 0's
 * step results. Worker start-up and model loading fall in the warm-up, so at least one warm-up step is required.
 * Per-stage times are not available across processes; memory is the sum of the workers' peak resident sets.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackendReport } from '../src/backend/select.ts';
import { saveModel } from '../src/checkpoint/save.ts';
import { mixSeed, mulberry32 } from '../src/data/prng.ts';
import { ConfigError } from '../src/errors.ts';
import { writeMegatronIndexed } from '../src/io/megatronIndexed.ts';
import { DEFAULTS } from '../src/recipe/config.ts';
import { DEFAULT_KD_LOSS } from '../src/losses/types.ts';
import type { LaunchHooks } from '../src/runtime/launcher.ts';
import { distillationRecipe } from '../src/recipe/config.ts';
import { run, type RunHooks } from '../pipelines/run.ts';
import { tokensPerStep, type BenchShape } from './configs.ts';
import { buildModel } from './ours.ts';
import type { RecomputeGranularity } from '../src/model/attention.ts';

export interface OursParallelOptions {
  backend: BackendReport;
  /** Data-parallel worker processes (1 runs run() in this process, without the launcher). */
  devices: number;
  /** Sequences per micro-batch on each rank (default batch / devices: one micro-batch per step, as the peer). */
  microBatchSize?: number;
  steps: number;
  warmup: number;
  /** What the student's backward recomputes (`--recompute_granularity`). */
  recompute?: RecomputeGranularity;
  seed?: number;
  log?: (line: string) => void;
}

export interface OursParallelResult {
  tokensPerS: number;
  wallMsPerStep: number;
  /** Sum over the workers of each one's peak resident set (VmHWM); null where /proc cannot be read. */
  peakRssBytes: number | null;
  lastLoss: number;
  /** Tokens the workers reported for the measured steps, summed over ranks (a check of the global batch). */
  reportedTokens: number;
  workers: number;
}

/** Peak resident set of a process from /proc (Linux), or null. */
function peakRss(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Random token documents, one window's worth each: `count` documents of `seq` ids below `vocab`. */
function randomDocuments(vocab: number, seq: number, count: number, seed: number): Int32Array[][] {
  const docs: Int32Array[][] = [];
  for (let d = 0; d < count; d++) {
    const rand = mulberry32(mixSeed(seed, d));
    const ids = new Int32Array(seq);
    for (let i = 0; i < seq; i++) ids[i] = Math.floor(rand() * vocab);
    docs.push([ids]);
  }
  return docs;
}

export async function runOursParallel(shape: BenchShape, o: OursParallelOptions): Promise<OursParallelResult> {
  const log = o.log ?? (() => {});
  const seed = o.seed ?? 1234;
  if (o.warmup < 1)
    throw new ConfigError('bench: --devices > 1 needs --warmup >= 1 (worker start-up and model loading are not timed; they end with the first step)');
  if (shape.batch % o.devices !== 0) throw new ConfigError(`bench: batch ${shape.batch} does not split over --devices ${o.devices}`);
  const microBatchSize = o.microBatchSize ?? shape.batch / o.devices;
  const dir = mkdtempSync(join(tmpdir(), 'bench-dp-'));
  try {
    const t0 = performance.now();
    const paths = { student: join(dir, 'student'), teacher: join(dir, 'teacher'), data: join(dir, 'data', 'random_text_document') };
    for (const role of ['student', 'teacher'] as const) {
      const model = buildModel(shape, role, seed);
      try {
        await saveModel(model, paths[role], { dtype: 'float32' });
      } finally {
        model.dispose();
      }
    }
    const total = o.warmup + o.steps;
    // Samples of an epoch are (tokens - 1) / seq: two documents more than the run reads, so it never wraps.
    mkdirSync(join(dir, 'data'));
    writeMegatronIndexed(paths.data, randomDocuments(shape.vocab, shape.seq, total * shape.batch + 2, seed), shape.vocab <= 65536 ? 'uint16' : 'int32');
    log(
      `ours: wrote teacher, student and ${total * shape.batch + 2} random windows in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${o.devices} worker processes on ${o.backend.chosen}, ${o.warmup} warm-up + ${o.steps} measured steps`,
    );

    const recipe = distillationRecipe({
      name: 'bench',
      dir,
      studentPath: paths.student,
      teacherPath: paths.teacher,
      backend: o.backend.chosen,
      data: { dataPaths: paths.data, seqLength: shape.seq, split: '100,0,0', seed },
      trainer: {
        maxSteps: total,
        globalBatchSize: shape.batch,
        microBatchSize,
        valCheckInterval: 0,
        saveInterval: total + 1,
        logInterval: 1,
        precision: o.backend.precision,
        recomputeGranularity: o.recompute ?? null,
      },
      optim: { lr: 1e-4, minLr: 1e-4, warmupSteps: 0, clipGrad: 1.0, weightDecay: 0.01 },
      loss: { ...DEFAULT_KD_LOSS, scaleByTemperatureSquared: false, kdRatio: 1, chunkSize: DEFAULTS.loss.chunkSize },
      parallel: { devicesPerNode: o.devices },
    });

    const ends: { step: number; at: number; tokens: number; loss: number }[] = [];
    const peaks = new Map<number, number>();
    let pids: number[] = [];
    const sample = (): void => {
      for (const pid of pids) {
        const b = peakRss(pid);
        if (b !== null) peaks.set(pid, Math.max(peaks.get(pid) ?? 0, b));
      }
    };
    const poll = setInterval(sample, 1000);
    // run() hands its hooks to launchWorkers unchanged; onWorkers gives the worker pids for their peak RSS.
    const hooks: RunHooks & Pick<LaunchHooks, 'onWorkers'> = {
      log: (line) => log(`ours: ${line}`),
      progress: false,
      onWorkers: (ws) => {
        pids = ws.map((w) => w.pid).filter((p) => p > 0);
      },
      onStep: (r) => {
        ends.push({ step: r.step, at: performance.now(), tokens: r.tokens, loss: r.loss });
        sample();
        log(`ours: step ${r.step + 1}/${total}${r.step < o.warmup ? ' (warm-up)' : ''}: loss ${r.loss.toFixed(4)}, ${r.tokens} tokens over ${o.devices} ranks`);
      },
    };
    try {
      await run(recipe, hooks);
    } finally {
      clearInterval(poll);
    }
    const start = ends.find((e) => e.step === o.warmup - 1);
    const measured = ends.filter((e) => e.step >= o.warmup);
    if (!start || measured.length !== o.steps)
      throw new Error(`bench: expected steps ${o.warmup - 1}..${total - 1} from the workers, got ${ends.map((e) => e.step).join(', ')}`);
    const wallMs = measured[measured.length - 1].at - start.at;
    return {
      tokensPerS: (tokensPerStep(shape) * o.steps) / (wallMs / 1000),
      wallMsPerStep: wallMs / o.steps,
      peakRssBytes: peaks.size > 0 ? [...peaks.values()].reduce((a, b) => a + b, 0) : null,
      lastLoss: measured[measured.length - 1].loss,
      reportedTokens: measured.reduce((a, e) => a + e.tokens, 0),
      workers: pids.length,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
