/**
 * `run(recipe)`: executes a distillation (or pretraining) recipe end to end: picks the backend, loads the models,
 * resumes from the run's last checkpoint when there is one, streams the pipeline, and saves only the student.
 */
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { mkdirSync } from 'node:fs';
import { selectBackend, type BackendReport } from '../src/backend/select.ts';
import { loadModel, readModelConfig } from '../src/checkpoint/load.ts';
import { hashModelFiles, saveModel } from '../src/checkpoint/save.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import { AdamW } from '../src/optim/adamw.ts';
import { cosineAnnealingLr } from '../src/optim/schedule.ts';
import { Credits } from '../src/train/credits.ts';
import type { StepResult } from '../src/train/batch.ts';
import {
  checkFingerprint, latestCheckpoint, loadOptimizerState, readTrainingState, saveTrainingCheckpoint,
  type RunFingerprint, type TrainingState,
} from '../src/train/trainingCheckpoint.ts';
import { validateRecipe } from '../src/recipe/validate.ts';
import { checkModelParallelRecipe, layoutOf } from '../src/recipe/validateLayout.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { alignVocabularies } from '../src/train/vocabularyCheck.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { RunLogs } from '../src/train/runLogs.ts';
import { evaluateOn } from './evaluate.ts';
import { distillPipeline } from './distill.ts';
import { distillFromCachePipeline } from './distillFromCache.ts';
import { TeacherCache } from '../src/io/teacherCache.ts';
import { checkCacheForRun } from '../src/cache/compatibility.ts';
import type { TrainingContext } from './context.ts';
import type { ValidationResult } from '../operators/validationTap.ts';
import { tap } from 'rxjs';
import { StepBarrier } from '../src/train/stepBarrier.ts';
import { removeIncompleteCheckpoints } from '../src/parallel/checkpointHygiene.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import type { MetricsSink } from '../operators/metricsTap.ts';
import { launchWorkers } from '../src/parallel/launcher.ts';
import { needsWorkers } from '../src/parallel/placement.ts';
import { checkOneNode } from '../src/parallel/launchEnv.ts';
import type { DataParallelRank } from '../src/parallel/dataParallelRank.ts';

export interface RunResult {
  runDir: string;
  studentDir: string;
  steps: StepResult[];
  validations: ValidationResult[];
  resumedFromStep: number;
  backend: BackendReport;
  stoppedEarly: boolean;
}

export interface RunHooks {
  /** Say where progress goes; defaults to stderr. null silences the run. */
  log?: ((line: string) => void) | null;
  /** Stop after this many steps of this invocation (tests of resume); the checkpoint is written first. */
  stopAfterSteps?: number;
  /** An abort signal: the run stops after the current step, writes a checkpoint, and returns. */
  signal?: AbortSignal;
  /** Show a progress bar (default: when stderr is a TTY or not in a test). */
  progress?: boolean;
  /** Called with each step's result, after it is logged. */
  onStep?: (result: StepResult) => void;
  /** Set by a worker process (src/parallel/worker.ts): this run is one data-parallel rank of several. */
  dataParallel?: DataParallelRank;
}

export async function run(recipe: DistillationRecipe, hooks: RunHooks = {}): Promise<RunResult> {
  const log = hooks.log === undefined ? (l: string) => process.stderr.write(l + '\n') : hooks.log ?? (() => {});
  validateRecipe(recipe);
  const layout = layoutOf(recipe);
  if (layout.tp * layout.pp * layout.cp > 1) checkModelParallelRecipe(recipe, layout);
  // Several devices, or a teacher of its own: fork one worker per device, each of which runs this function as a rank.
  const dp = hooks.dataParallel;
  if (!dp) checkOneNode(recipe.parallel.numNodes);
  if (!dp && needsWorkers(recipe)) return launchWorkers(recipe, hooks);
  const leader = !dp || dp.leader; // only rank 0 writes checkpoints, logs and the final student
  const backend = await selectBackend(recipe.backend, { log, adapterIndex: dp?.deviceIndex, precision: recipe.trainer.precision });
  const runDir = join(recipe.logDir, recipe.name);
  mkdirSync(runDir, { recursive: true });
  const t = recipe.trainer;
  const data = recipe.data;

  // 1. Load the student and (for distillation) the frozen teacher.
  // A killed run may have left hidden temporaries (and, before this version, a half-deleted old checkpoint).
  if (leader) removeIncompleteCheckpoints(runDir);
  const resume = latestCheckpoint(runDir);
  const studentDir = resume ? join(resume.dir, 'student') : recipe.studentPath;
  const student = await loadModel(studentDir, { trainable: true });
  // --teacher_cache replaces the teacher: its cached outputs are read, its weights never loaded.
  const cache = recipe.kind === 'distill' && recipe.teacherCache ? TeacherCache.open(recipe.teacherCache) : null;
  const teacher: CausalLM | null = recipe.kind === 'distill' && recipe.teacherPath && !cache && !dp?.remoteTeacher ? await loadModel(recipe.teacherPath, { trainable: false }) : null;
  if (teacher || dp?.remoteTeacher) log(alignVocabularies(teacher?.config ?? readModelConfig(recipe.teacherPath!), student.config, recipe));

  const sources = openDataSources(recipe, student.config.vocabSize);
  if (cache) {
    log(checkCacheForRun(cache.fingerprint, {
      cacheDir: cache.dir, dataFingerprint: sources.fingerprint, seqLength: data.seqLength, studentVocab: student.config.vocabSize,
      samplesNeeded: Math.min(t.maxSteps * t.globalBatchSize, sources.train.numSamples), loss: recipe.loss,
      teacherPath: recipe.teacherPath, teacherSha256: recipe.teacherPath ? hashModelFiles(recipe.teacherPath) : undefined,
    }));
  }
  const fingerprint = { ...runFingerprint(recipe, sources.fingerprint), ...(cache ? { teacher: `teacher cache ${cache.id}` } : {}) };
  const optimizer = studentOptimizer(recipe, student.params);
  let startStep = 0;
  let skippedSteps = 0;
  if (resume) {
    const state = readTrainingState(resume);
    checkFingerprint(resume, state, fingerprint);
    loadOptimizerState(resume, optimizer, student.params.keys());
    startStep = state.step;
    skippedSteps = state.skippedSteps;
    log(`resuming ${runDir} from step ${startStep} (${resume.dir})`);
  }

  const logs = leader ? new RunLogs(runDir, { resumeAfterStep: startStep - 1, maxSteps: t.maxSteps, startStep, log, progress: hooks.progress }) : null;
  const credits = dp ? dp.credits(t.inFlight, startStep) : new Credits(t.inFlight);
  const barrier = new StepBarrier();
  const pending: Promise<void>[] = [];
  const steps: StepResult[] = [];
  const validations: ValidationResult[] = [];
  const lastStep = t.maxSteps - 1;
  const stopAt = hooks.stopAfterSteps !== undefined ? Math.min(lastStep, startStep + hooks.stopAfterSteps - 1) : lastStep;

  const saveCheckpoint = async (r: StepResult): Promise<void> => {
    const state: TrainingState = {
      format: 1, step: r.step + 1, samplesSeen: r.samplesSeen, seed: data.seed, skippedSteps, fingerprint,
    };
    await saveTrainingCheckpoint(runDir, student, optimizer, state);
  };
  const ctx: TrainingContext = {
    read: {
      seqLength: data.seqLength, globalBatchSize: t.globalBatchSize, microBatchSize: t.microBatchSize,
      startStep, maxSteps: stopAt + 1, credits, ...dp?.readSlice,
    },
    loss: { ...recipe.loss, kdRatio: teacher || cache || dp?.remoteTeacher ? recipe.loss.kdRatio : 0 },
    step: {
      optimizer, clipGrad: recipe.optim.clipGrad, nanPolicy: t.nanPolicy, globalBatchSize: t.globalBatchSize,
      lrAt: learningRate(recipe),
      reduceGradients: dp?.reduceGradients,
      barrier,
    },
    validation: {
      interval: sources.valid && leader ? t.valCheckInterval : 0,
      lastStep: stopAt,
      validate: async (step) => ({ step, ...(await evaluateOn(student, teacher, sources.valid!, { ...recipe.loss, seqLength: data.seqLength, microBatchSize: t.microBatchSize, limitBatches: t.limitValBatches })) }),
      onValidation: (v) => { validations.push(v); logs?.onValidation(v); },
    },
    sinks: stepSinks(dp, [...(logs ? [logs] : []), { onStep: (r) => { steps.push(r); if (r.skipped) skippedSteps++; hooks.onStep?.(r); } }]),
    checkpoint: { saveInterval: recipe.trainer.saveInterval, lastStep: stopAt, save: leader ? saveCheckpoint : async () => {}, pending },
  };

  // 2–3. The loss, both forward passes and the student's backward pass are the pipeline's stages.
  const pipeline = cache ? distillFromCachePipeline(student, cache, sources.train, ctx)
    : distillPipeline(student, dp?.remoteTeacher?.stage() ?? (teacher ? teacherTargets(teacher) : null), sources.train, ctx);
  let stoppedEarly = false;
  await new Promise<void>((resolve, reject) => {
    // Stopping closes the source: micro-batches already in flight drain through the stages, the stream completes,
    // and checkpointSink writes the last completed step. Weights and checkpoint always agree.
    const onStop = (): void => {
      if (stoppedEarly) return;
      stoppedEarly = true;
      log('stopping: finishing the batches in flight, then writing a checkpoint');
      credits.close();
    };
    // The end of the pipeline lets backward go on to the next step (see StepBarrier).
    const sub = pipeline.pipe(tap((r) => barrier.release(r.step))).subscribe({ error: reject, complete: resolve });
    hooks.signal?.addEventListener('abort', onStop, { once: true });
    process.once('SIGINT', onStop);
    sub.add(() => process.off('SIGINT', onStop));
  }).finally(() => {
    credits.close();
    barrier.releaseAll();
  });
  await Promise.all(pending);
  await dp?.flush();

  // 4. Save only the student, in the Hugging Face layout.
  const finalDir = join(runDir, 'student');
  const finished = !stoppedEarly && stopAt === lastStep;
  if (finished && leader) await saveModel(student, finalDir, { dtype: 'float32' });
  logs?.close(finished ? { studentDir: finalDir } : undefined);
  optimizer.dispose();
  student.dispose();
  teacher?.dispose();
  cache?.close();
  return { runDir, studentDir: finalDir, steps, validations, resumedFromStep: startStep, backend, stoppedEarly: !finished };
}

/** A data-parallel rank's sinks see each step once rank 0 has summed the ranks' losses (src/parallel/dataParallelRank.ts). */
function stepSinks(dp: DataParallelRank | undefined, sinks: MetricsSink[]): MetricsSink[] {
  return dp ? [dp.gatherSteps(sinks)] : sinks;
}

/** AdamW with the recipe's settings over the student's (or this rank's) parameters. */
export function studentOptimizer(recipe: DistillationRecipe, params: Map<string, tf.Variable>): AdamW {
  const o = recipe.optim;
  return new AdamW(params, { beta1: o.adamBeta1, beta2: o.adamBeta2, eps: o.adamEps, weightDecay: o.weightDecay, weightDecayAll: o.weightDecayAll });
}

/** The learning rate at each 0-based step: NeMo's cosine annealing with linear warm-up. */
export function learningRate(recipe: DistillationRecipe): (step: number) => number {
  const o = recipe.optim;
  return (s) => cosineAnnealingLr(s, { lr: o.lr, minLr: o.minLr, warmupSteps: o.warmupSteps, maxSteps: recipe.trainer.maxSteps });
}

export function runFingerprint(recipe: DistillationRecipe, data: string): RunFingerprint {
  return {
    student: hashModelFiles(recipe.studentPath),
    teacher: recipe.teacherPath ? hashModelFiles(recipe.teacherPath) : 'none',
    data,
    seqLength: recipe.data.seqLength,
    globalBatchSize: recipe.trainer.globalBatchSize,
  };
}
