/**
 * `run(recipe)`: executes a distillation (or pretraining) recipe end to end. With several devices (or a teacher of
 * its own) it launches one worker per device (src/runtime/launcher.ts), each of which runs `runInThisProcess` as a
 * data-parallel rank, or pipelines/modelParallelRun.ts as a model-parallel one; otherwise it runs here: picks the
 * backend, loads the models, resumes from the run's last checkpoint (src/train/prepareRun.ts), streams the one
 * composition (pipelines/distill.ts), and saves only the student.
 */
import { fileURLToPath } from 'node:url';
import { tap } from 'rxjs';
import { selectBackend } from '../src/backend/select.ts';
import { loadModel, readModelConfig } from '../src/checkpoint/load.ts';
import { hashModelFiles, saveModel } from '../src/checkpoint/save.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import { Credits } from '../src/train/credits.ts';
import type { StepResult } from '../src/train/batch.ts';
import { loadOptimizerState, saveTrainingCheckpoint } from '../src/train/trainingCheckpoint.ts';
import { validateRecipe } from '../src/recipe/validate.ts';
import { checkModelParallelRecipe, layoutOf } from '../src/recipe/validateLayout.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { learningRate, studentOptimizer } from '../src/recipe/trainingObjects.ts';
import { alignVocabularies } from '../src/train/vocabularyCheck.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { prepareRun, runFingerprint } from '../src/train/prepareRun.ts';
import type { RunResult } from '../src/train/runResult.ts';
import { StepBarrier } from '../src/train/stepBarrier.ts';
import { TeacherCache } from '../src/io/teacherCache.ts';
import { checkCacheForRun } from '../src/cache/compatibility.ts';
import { launchWorkers, type LaunchHooks } from '../src/runtime/launcher.ts';
import { needsWorkers } from '../src/parallel/placement.ts';
import { checkOneNode } from '../src/runtime/launchEnv.ts';
import type { DataParallelRank } from '../src/parallel/dataParallelRank.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { cachedTeacherTargets } from '../operators/cachedTeacherTargets.ts';
import type { MetricsSink } from '../operators/metricsTap.ts';
import { evaluateOn } from './evaluate.ts';
import { distillPipeline } from './distill.ts';
import type { TrainingContext } from './context.ts';

// Kept for one release at their 0.1 paths: the result types live in src/train/runResult.ts, the recipe's objects
// in src/recipe/trainingObjects.ts.
export type { RunResult, ValidationResult } from '../src/train/runResult.ts';
export { learningRate, studentOptimizer } from '../src/recipe/trainingObjects.ts';
export { runFingerprint } from '../src/train/prepareRun.ts';

export interface RunHooks extends Omit<LaunchHooks, 'program'> {
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
}

/** What a worker process runs (pipelines/workerProgram.ts), handed to the launcher by path. */
const WORKER_PROGRAM = fileURLToPath(new URL('./workerProgram.ts', import.meta.url));

export async function run(recipe: DistillationRecipe, hooks: RunHooks = {}): Promise<RunResult> {
  validateRecipe(recipe);
  const layout = layoutOf(recipe);
  if (layout.tp * layout.pp * layout.cp > 1) checkModelParallelRecipe(recipe, layout);
  checkOneNode(recipe.parallel.numNodes);
  // Several devices, or a teacher of its own: one worker per device.
  if (needsWorkers(recipe)) return launchWorkers(recipe, { ...hooks, program: WORKER_PROGRAM });
  return runInThisProcess(recipe, hooks);
}

/** The run in this process: the whole run, or (with `dp`) one data-parallel rank of a launched run. */
export async function runInThisProcess(recipe: DistillationRecipe, hooks: RunHooks, dp?: DataParallelRank): Promise<RunResult> {
  const log = hooks.log === undefined ? (l: string) => process.stderr.write(l + '\n') : hooks.log ?? (() => {});
  const leader = !dp || dp.leader; // only rank 0 writes checkpoints, logs and the final student
  const backend = await selectBackend(recipe.backend, { log, adapterIndex: dp?.deviceIndex, precision: recipe.trainer.precision });
  const t = recipe.trainer;
  const data = recipe.data;
  const prepared = prepareRun(recipe, { leader, log, progress: hooks.progress, stopAfterSteps: hooks.stopAfterSteps });

  // 1. Load the student (the checkpoint's when resuming) and, for distillation, the frozen teacher.
  const student = await loadModel(prepared.studentDir, { trainable: true });
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
  const optimizer = studentOptimizer(recipe, student.params);
  prepared.resume(runFingerprint(recipe, sources.fingerprint, cache?.id), (ref) => loadOptimizerState(ref, optimizer, student.params.keys()));
  const { startStep, stopAt, logs } = prepared;

  let stoppedEarly = false;
  if (!prepared.alreadyFinished) {
    const credits = dp ? dp.credits(t.inFlight, startStep) : new Credits(t.inFlight);
    const barrier = new StepBarrier();
    const pending: Promise<void>[] = [];
    const ctx: TrainingContext = {
      read: {
        seqLength: data.seqLength, globalBatchSize: t.globalBatchSize, microBatchSize: t.microBatchSize,
        startStep, maxSteps: stopAt + 1, credits, ...dp?.readSlice,
      },
      loss: recipe.loss,
      step: {
        optimizer, clipGrad: recipe.optim.clipGrad, nanPolicy: t.nanPolicy, globalBatchSize: t.globalBatchSize,
        lrAt: learningRate(recipe), reduceGradients: dp?.reduceGradients, barrier,
      },
      validation: {
        interval: sources.valid && leader ? t.valCheckInterval : 0,
        lastStep: stopAt,
        validate: async (step) => ({ step, ...(await evaluateOn(student, teacher, sources.valid!, { ...recipe.loss, seqLength: data.seqLength, microBatchSize: t.microBatchSize, limitBatches: t.limitValBatches })) }),
        onValidation: (v) => prepared.onValidation(v),
      },
      sinks: stepSinks(dp, [...(logs ? [logs] : []), { onStep: (r) => { prepared.onStep(r); hooks.onStep?.(r); } }]),
      checkpoint: {
        saveInterval: t.saveInterval, lastStep: stopAt, pending,
        save: leader ? (r) => saveTrainingCheckpoint(prepared.runDir, student, optimizer, prepared.trainingState(r)).then(() => {}) : async () => {},
      },
    };

    // 2–3. The teacher's stage (online, cached, on its own worker, or none), the loss, both forward passes and the
    // student's backward pass are the pipeline's stages.
    const cached = cache ? cachedTeacherTargets(cache, { numSamples: sources.train.numSamples, loss: recipe.loss, studentVocab: student.config.vocabSize }) : null;
    const teacherStage = cached ?? dp?.remoteTeacher?.stage() ?? (teacher ? teacherTargets(teacher) : null);
    const pipeline = distillPipeline(student, teacherStage, sources.train, ctx);
    await new Promise<void>((resolve, reject) => {
      // Stopping closes the source: micro-batches already in flight drain through the stages, the stream completes,
      // and checkpointSink writes the last completed step. Weights and checkpoint always agree.
      const onStop = (): void => {
        if (stoppedEarly) return;
        stoppedEarly = true;
        log('stopping: finishing the batches in flight, then writing a checkpoint');
        credits.close();
      };
      // The end of the pipeline lets the optimizer step go on to the next step (see StepBarrier).
      const sub = pipeline.pipe(tap((r) => barrier.release(r.step))).subscribe({ error: reject, complete: resolve });
      hooks.signal?.addEventListener('abort', onStop, { once: true });
      process.once('SIGINT', onStop);
      sub.add(() => process.off('SIGINT', onStop));
    }).finally(() => {
      credits.close();
      barrier.releaseAll();
      cached?.release();
    });
    await Promise.all(pending);
    await dp?.flush();
  }

  // 4. Save only the student, in the Hugging Face layout.
  const finished = await prepared.finish(stoppedEarly, async (dir) => { if (leader) await saveModel(student, dir, { dtype: 'float32' }); });
  optimizer.dispose();
  student.dispose();
  teacher?.dispose();
  cache?.close();
  sources.train.close();
  sources.valid?.close();
  const steps = prepared.steps;
  return {
    runDir: prepared.runDir, studentDir: prepared.finalDir, steps, validations: prepared.validations, resumedFromStep: startStep, backend,
    stoppedEarly: !finished, alreadyFinished: prepared.alreadyFinished, lastStep: steps[steps.length - 1] ?? prepared.savedLastStep,
  };
}

/** A data-parallel rank's sinks see each step once rank 0 has summed the ranks' losses (src/parallel/dataParallelRank.ts). */
function stepSinks(dp: DataParallelRank | undefined, sinks: MetricsSink[]): MetricsSink[] {
  return dp ? [dp.gatherSteps(sinks)] : sinks;
}
