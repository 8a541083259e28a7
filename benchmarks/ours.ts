/**
 * Our side of the benchmark: end-to-end online distillation throughput of the project's own pipeline, with the
 * operators composed exactly as pipelines/distill.ts composes them (readBatches → teacherTargets → attachStudent →
 * klLoss → backward → optimizerStep), on random-init Llama teacher and student built from benchmarks/configs.json and a synthetic
 * source of random token windows. Only the taps of the StageClock are added between the stages.
 */
import { lastValueFrom, tap, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { KernelProfile } from '../src/backend/cuda/kernelProfile.ts';
import type { BackendReport } from '../src/backend/select.ts';
import { createModel } from '../src/model/create.ts';
import { parseModelConfig } from '../src/model/config.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import { mixSeed, mulberry32 } from '../src/data/prng.ts';
import { AdamW, NEMO_ADAMW_DEFAULTS } from '../src/optim/adamw.ts';
import { DEFAULT_KD_LOSS } from '../src/losses/types.ts';
import { DEFAULTS } from '../src/recipe/config.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { attachStudent } from '../operators/attachStudent.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { optimizerStep } from '../operators/optimizerStep.ts';
import { llamaConfigJson, tokensPerStep, type BenchShape } from './configs.ts';
import { StageClock, STAGES, TimedCredits, type MemoryPeak, type Stage } from './stageClock.ts';
import type { RecomputeGranularity } from '../src/model/attention.ts';

export interface OursOptions {
  /** The backend already selected (selectBackend), once per invocation. */
  backend: BackendReport;
  steps: number;
  warmup: number;
  /** What the student's backward recomputes (`--recompute_granularity`). */
  recompute?: RecomputeGranularity;
  seed?: number;
  log?: (line: string) => void;
}

export interface OursResult {
  backend: BackendReport;
  tokensPerS: number;
  steps: number;
  warmup: number;
  tokensPerStep: number;
  /** Wall time of the measured steps, and each stage's busy time per step (ms). */
  wallMsPerStep: number;
  stagesMsPerStep: Record<Stage, number>;
  memory: MemoryPeak;
  /** Last measured step's loss: a sanity check that the pipeline did real work (forward KL ≥ 0, finite). */
  lastLoss: number;
  buildMs: number;
}

/**
 * Random weights with std 0.02 (uniform, ±0.02·√3: cheaper than Gaussian for 10^8 values and the same scale
 * transformers initialises with), norm weights 1. Throughput does not depend on the values.
 */
function randomWeights(seed: number): (name: string, shape: number[]) => Float32Array {
  return (name, shape) => {
    const n = shape.reduce((a, d) => a * d, 1);
    const out = new Float32Array(n);
    if (shape.length === 1) return out.fill(1);
    const rand = mulberry32(mixSeed(seed, ...Array.from(name, (ch) => ch.charCodeAt(0))));
    const a = 0.02 * Math.sqrt(3);
    for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * a;
    return out;
  };
}

export function buildModel(shape: BenchShape, role: 'student' | 'teacher', seed: number, recompute: RecomputeGranularity = null): CausalLM {
  const config = parseModelConfig(llamaConfigJson(shape, role), `<bench ${role}>`);
  return createModel(config, randomWeights(mixSeed(seed, role === 'student' ? 1 : 2)), { trainable: role === 'student', recompute });
}

/** Uniformly random token windows of seq + 1 ids, a pure function of (seed, index) like a real dataset. */
export function randomTokenSource(vocab: number, seq: number, seed: number, numSamples = 1 << 20): SampleSource {
  return {
    numSamples,
    sample(index: number): Int32Array {
      const rand = mulberry32(mixSeed(seed, index));
      const out = new Int32Array(seq + 1);
      for (let i = 0; i < out.length; i++) out[i] = Math.floor(rand() * vocab);
      return out;
    },
  };
}

/** Milliseconds the cuda backend's reads have waited so far; null on other backends. */
function cudaReadWaitMs(): number | null {
  const ms = (tf.backend() as unknown as { readWaitMs?: number }).readWaitMs;
  return typeof ms === 'number' ? ms : null;
}

/** The cuda backend's kernel profile, when it is the backend and profiling is on. */
function kernelProfile(): KernelProfile | null {
  return (tf.backend() as unknown as { profile?: KernelProfile | null }).profile ?? null;
}

export async function runOurs(shape: BenchShape, o: OursOptions): Promise<OursResult> {
  const log = o.log ?? (() => {});
  const seed = o.seed ?? 1234;
  const backend = o.backend;
  const t0 = performance.now();
  const teacher = buildModel(shape, 'teacher', seed);
  const student = buildModel(shape, 'student', seed, o.recompute ?? null);
  const optimizer = new AdamW(student.params, NEMO_ADAMW_DEFAULTS);
  const buildMs = performance.now() - t0;
  log(`ours: built teacher and student in ${(buildMs / 1000).toFixed(1)} s on ${backend.chosen}; ${o.warmup} warm-up + ${o.steps} measured steps`);

  const clock = new StageClock(o.warmup);
  const readWait: { start: number | null } = { start: null };
  const credits = new TimedCredits(clock);
  const total = o.warmup + o.steps;
  const started = performance.now();
  try {
    const results = await lastValueFrom(
      readBatches(randomTokenSource(shape.vocab, shape.seq, seed), {
        seqLength: shape.seq,
        globalBatchSize: shape.batch,
        microBatchSize: shape.batch,
        startStep: 0,
        maxSteps: total,
        credits,
      })
        .pipe(
          clock.afterRead(),
          teacherTargets(teacher),
          clock.afterTeacher(),
          attachStudent(student),
          // Forward KL at τ = 1 without a τ² factor, as NeMo/Megatron train and as the peer computes it.
          klLoss({ ...DEFAULT_KD_LOSS, scaleByTemperatureSquared: false, kdRatio: 1, chunkSize: DEFAULTS.loss.chunkSize }),
          clock.beforeBackward(),
          // backward then the optimizer step: the composition the 0.1 `backward(student, { optimizer, ... })` made in one.
          backward(student, { credits, gradNorm: true }),
          optimizerStep({ optimizer, lrAt: () => 1e-4, clipGrad: 1.0, nanPolicy: 'stop', globalBatchSize: shape.batch }),
          clock.afterStep(),
        )
        .pipe(
          // One line per step: an S or M run takes minutes, and a silent one looks hung.
          tap((r) => {
            log(
              `ours: step ${r.step + 1}/${total}${r.step < o.warmup ? ' (warm-up)' : ''}: ${(r.elapsedMs / 1000).toFixed(2)} s in backward, loss ${r.loss.toFixed(4)}`,
            );
            // The cuda kernel profile (DISTILL_CUDA_PROFILE=1) covers the measured steps only.
            if (r.step === o.warmup - 1) {
              kernelProfile()?.reset();
              readWait.start = cudaReadWaitMs();
            }
          }),
          toArray(),
        ),
    );
    clock.finish();
    const profile = kernelProfile();
    const waited = cudaReadWaitMs();
    if (waited !== null && readWait.start !== null) {
      const ms = (waited - readWait.start) / o.steps;
      log(`ours: cuda reads took ${ms.toFixed(1)} ms a step from request to values (near 0: the GPU keeps up with the host, which sets the pace)`);
    }
    if (profile) {
      log(`ours: cuda device time by kernel over ${o.steps} measured steps (each launch timed on its own)\n${profile.table()}`);
      log(`ours: the same by launch size\n${profile.table(40, true)}`);
    }
    const measureStart = clock.measureStart ?? started;
    const wallMs = clock.lastStepEnd - measureStart;
    const perStep = (ms: number): number => ms / o.steps;
    const stagesMsPerStep = Object.fromEntries(STAGES.map((s) => [s, perStep(clock.totals[s])])) as Record<Stage, number>;
    const last = results[results.length - 1];
    return {
      backend,
      tokensPerS: (tokensPerStep(shape) * o.steps) / (wallMs / 1000),
      steps: o.steps,
      warmup: o.warmup,
      tokensPerStep: tokensPerStep(shape),
      wallMsPerStep: perStep(wallMs),
      stagesMsPerStep,
      memory: clock.peak,
      lastLoss: last.loss,
      buildMs,
    };
  } finally {
    credits.close();
    optimizer.dispose();
    student.dispose();
    teacher.dispose();
  }
}
