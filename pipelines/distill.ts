/**
 * Distillation, NeMo's four steps: `distillInThisProcess` below runs them for a recipe, and `distillPipeline` is
 * steps 2 and 3 as one stream of RxJS operators from `operators/`, which a user composes the same way.
 *
 * The teacher stage is what differs between the ways of distilling: the teacher online (`teacherTargets`), its
 * cached outputs (`cachedTeacherTargets`), a teacher on its own worker (`RemoteTeacher.stage()`), or none at all
 * (`null`: pretraining on next-token CE). Metrics are logged before the checkpoint is written, so a crash between
 * the two only repeats a step's record on resume (the log is truncated to the checkpoint), never loses it.
 * (`run(recipe)` in run.ts calls this, or launches workers that each do; model-parallel ranks: modelParallelRun.ts.)
 */
import type { Observable, OperatorFunction } from 'rxjs';
import { selectBackend } from '../src/backend/select.ts';
import { loadModel } from '../src/checkpoint/load.ts';
import { saveModel } from '../src/checkpoint/save.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { studentOptimizer } from '../src/recipe/trainingObjects.ts';
import type { StepResult, TeacherBatch, TokenBatch } from '../src/train/batch.ts';
import { Credits } from '../src/train/credits.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { prepareRun, runFingerprint } from '../src/train/prepareRun.ts';
import type { RunResult } from '../src/train/runResult.ts';
import { StepBarrier } from '../src/train/stepBarrier.ts';
import { streamToEnd } from '../src/train/streamToEnd.ts';
import { loadOptimizerState } from '../src/train/trainingCheckpoint.ts';
import type { DataParallelRank } from '../src/parallel/dataParallelRank.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { attachStudent } from '../operators/attachStudent.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { optimizerStep } from '../operators/optimizerStep.ts';
import { validationTap } from '../operators/validationTap.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';
import { trainingContext, type TrainingContext } from './context.ts';
import { openTeacher, type TeacherStage } from './teacherStage.ts';

export type { TeacherStage };

/**
 * Steps 2 and 3 as one stream: the KD loss in place of the language-modelling loss, both forward passes, and
 * back-propagation through the student only (the teacher stage runs outside any tape), then the optimizer step,
 * validation, metrics and checkpoints.
 * @param teacherStage the teacher's stage (a frozen CausalLM is taken as `teacherTargets(teacher)`, the 0.1 form)
 */
export function distillPipeline(student: CausalLM, teacherStage: TeacherStage | CausalLM, source: SampleSource, c: TrainingContext): Observable<StepResult> {
  const teacher = isModel(teacherStage) ? teacherTargets(teacherStage) : teacherStage;
  const toTeacherBatch: OperatorFunction<TokenBatch, TeacherBatch> = teacher ?? ((batches) => batches);
  return readBatches(source, c.read).pipe(
    toTeacherBatch,
    attachStudent(student),
    klLoss(teacher ? c.loss : { ...c.loss, kdRatio: 0 }),
    backward(student, c.backward),
    optimizerStep(c.step),
    validationTap(c.validation),
    metricsTap(c.sinks),
    checkpointSink(c.checkpoint),
  );
}

export interface DistillHooks {
  /** Where progress goes; defaults to stderr. null silences the run. */
  log?: ((line: string) => void) | null;
  stopAfterSteps?: number;
  signal?: AbortSignal;
  progress?: boolean;
  onStep?: (result: StepResult) => void;
}

/** A recipe's run in this process: the whole run, or (with `dp`) one data-parallel rank of a launched run. */
export async function distillInThisProcess(recipe: DistillationRecipe, hooks: DistillHooks = {}, dp?: DataParallelRank): Promise<RunResult> {
  const log = hooks.log === undefined ? (l: string) => process.stderr.write(l + '\n') : (hooks.log ?? (() => {}));
  const leader = !dp || dp.leader; // only rank 0 writes checkpoints, logs and the final student
  const backend = await selectBackend(recipe.backend, { log, adapterIndex: dp?.deviceIndex, precision: recipe.trainer.precision });
  const run = prepareRun(recipe, { leader, log, progress: hooks.progress, stopAfterSteps: hooks.stopAfterSteps });

  // 1. Load the student (the last checkpoint's when resuming) and the frozen teacher (or its cache, or its worker).
  const student = await loadModel(run.studentDir, {
    trainable: true,
    recompute: recipe.trainer.recomputeGranularity,
    recomputeLayers: recipe.trainer.recomputeLayers,
  });
  const sources = openDataSources(recipe, student.config.vocabSize);
  const teacher = await openTeacher(recipe, student, sources, log, dp?.remoteTeacher);
  const optimizer = studentOptimizer(recipe, student.params);
  run.resume(runFingerprint(recipe, sources.fingerprint, teacher.cacheId), (ref) => loadOptimizerState(ref, optimizer, student.params.keys()));

  // 2–3. Replace the loss with the KD loss; run both forward passes, back-propagate through the student only.
  let stoppedEarly = false;
  if (!run.alreadyFinished) {
    const credits = dp ? dp.credits(recipe.trainer.inFlight, run.startStep) : new Credits(recipe.trainer.inFlight);
    const barrier = new StepBarrier();
    const pending: Promise<void>[] = [];
    const ctx = trainingContext({ recipe, run, student, teacher: teacher.model, sources, optimizer, credits, barrier, pending, dp, onStep: hooks.onStep });
    try {
      ({ stoppedEarly } = await streamToEnd(distillPipeline(student, teacher.stage, sources.train, ctx), { credits, barrier, signal: hooks.signal, log }));
      await Promise.all(pending);
      await dp?.flush();
    } finally {
      teacher.close();
    }
  } else {
    teacher.close();
  }

  // 4. Save only the student, in the Hugging Face layout.
  const finished = await run.finish(stoppedEarly, async (dir) => {
    if (leader) await saveModel(student, dir, { dtype: 'float32' });
  });
  optimizer.dispose();
  student.dispose();
  sources.train.close();
  sources.valid?.close();
  const steps = run.steps;
  return {
    runDir: run.runDir,
    studentDir: run.finalDir,
    steps,
    validations: run.validations,
    resumedFromStep: run.startStep,
    backend,
    stoppedEarly: !finished,
    alreadyFinished: run.alreadyFinished,
    lastStep: steps[steps.length - 1] ?? run.savedLastStep,
  };
}

function isModel(t: TeacherStage | CausalLM): t is CausalLM {
  return t !== null && typeof t === 'object';
}
