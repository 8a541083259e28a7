/**
 * One worker of a tensor/pipeline/context-parallel run (`distill run --tp_size 2 --pp_size 2 ...`): loads only its
 * slices of the student and the teacher, streams its data-parallel slice of the batches, and runs each global batch
 * through ModelParallelTrainer (1F1B over the stages, collectives over the TP and CP groups). Checkpoints are
 * gathered into full tensors and written by rank 0 in the same layout as a single worker's, so a run can resume
 * with any layout and the student loads in `transformers`.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { bufferCount, concatMap, filter, lastValueFrom, toArray } from 'rxjs';
import { selectBackend } from '../src/backend/select.ts';
import { saveModel } from '../src/checkpoint/save.ts';
import { coordsOf, type ParallelLayout } from '../src/parallel/layout.ts';
import { checkModelParallelRecipe } from '../src/recipe/validateLayout.ts';
import { Collectives } from '../src/parallel/modelParallel/collectives.ts';
import { ModelParallelTrainer } from '../src/parallel/modelParallel/modelParallelTrainer.ts';
import { gatherFullState, loadShardedModel, loadShardedOptimizerState } from '../src/parallel/modelParallel/shardedWeights.ts';
import type { Transport } from '../src/parallel/transport.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { disposeBatch, type StepResult, type TokenBatch } from '../src/train/batch.ts';
import { Credits } from '../src/train/credits.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { RunLogs } from '../src/train/runLogs.ts';
import { checkFingerprint, latestCheckpoint, readTrainingState, saveTrainingCheckpoint, type TrainingState } from '../src/train/trainingCheckpoint.ts';
import { readBatches } from '../operators/readBatches.ts';
import type { ValidationResult } from '../operators/validationTap.ts';
import { learningRate, runFingerprint, studentOptimizer, type RunResult } from './run.ts';

export interface ModelParallelRankOptions {
  transport: Transport;
  layout: ParallelLayout;
  rank: number;
  deviceIndex: number;
  log: (line: string) => void;
  stopAfterSteps?: number;
  onStep?: (r: StepResult) => void;
  /** True once the launcher asked to stop: the ranks agree on it at the next step's all-reduce. */
  stopRequested: () => boolean;
}

export async function runModelParallelRank(recipe: DistillationRecipe, o: ModelParallelRankOptions): Promise<RunResult | null> {
  const { layout, rank, log } = o;
  const leader = rank === 0;
  checkModelParallelRecipe(recipe, layout);
  const backend = await selectBackend(recipe.backend, { log: leader ? log : null, adapterIndex: o.deviceIndex, precision: recipe.trainer.precision });
  const runDir = join(recipe.logDir, recipe.name);
  mkdirSync(runDir, { recursive: true });
  const t = recipe.trainer;
  const resume = latestCheckpoint(runDir);
  const student = loadShardedModel(resume ? join(resume.dir, 'student') : recipe.studentPath, layout, rank, true);
  const teacher = recipe.kind === 'distill' && recipe.teacherPath ? loadShardedModel(recipe.teacherPath, layout, rank, false) : null;
  const sources = openDataSources(recipe, student.config.vocabSize);
  const fingerprint = runFingerprint(recipe, sources.fingerprint);
  const optimizer = studentOptimizer(recipe, student.params);
  let startStep = 0;
  let skippedSteps = 0;
  if (resume) {
    const state = readTrainingState(resume);
    checkFingerprint(resume, state, fingerprint);
    optimizer.loadState(loadShardedOptimizerState(resume, student));
    startStep = state.step;
    skippedSteps = state.skippedSteps;
    if (leader) log(`resuming ${runDir} from step ${startStep} (${resume.dir}), now as tp ${layout.tp} × pp ${layout.pp} × cp ${layout.cp} × dp ${layout.dp}`);
  }
  const coll = new Collectives(o.transport);
  const trainer = new ModelParallelTrainer({
    layout, rank, coll, student, teacher, optimizer,
    loss: { ...recipe.loss, kdRatio: teacher ? recipe.loss.kdRatio : 0 },
    clipGrad: recipe.optim.clipGrad, nanPolicy: t.nanPolicy, globalBatchSize: t.globalBatchSize,
    lrAt: learningRate(recipe),
    stopRequested: o.stopRequested,
  });
  const logs = leader ? new RunLogs(runDir, { resumeAfterStep: startStep - 1, maxSteps: t.maxSteps, startStep, log, progress: false }) : null;
  const lastStep = t.maxSteps - 1;
  const stopAt = o.stopAfterSteps !== undefined ? Math.min(lastStep, startStep + o.stopAfterSteps - 1) : lastStep;
  const numMicro = t.globalBatchSize / (t.microBatchSize * layout.dp);
  const credits = new Credits(Math.max(t.inFlight, numMicro));
  const { dp } = coordsOf(layout, rank);
  let stoppedEarly = false;
  let tag = 0;
  let validations = 0;
  const validationsDone: ValidationResult[] = [];
  const validate = async (step: number): Promise<void> => {
    const valid = sources.valid!;
    const available = Math.floor(valid.numSamples / t.microBatchSize);
    const count = Math.max(1, Math.min(t.limitValBatches ?? available, available));
    const micros = await lastValueFrom(readBatches(valid, { seqLength: recipe.data.seqLength, globalBatchSize: t.microBatchSize, microBatchSize: t.microBatchSize, startStep: 0, maxSteps: count }).pipe(toArray()));
    try {
      const v = { step, ...(await trainer.evaluate(micros, validations++)) };
      if (leader) {
        validationsDone.push(v);
        logs?.onValidation(v);
      }
    } finally {
      for (const b of micros) disposeBatch(b);
    }
  };
  const checkpoint = async (r: StepResult): Promise<void> => {
    const full = await gatherFullState(coll, layout, rank, student, optimizer, `checkpoint ${tag++}`);
    if (!full) return;
    const state: TrainingState = { format: 1, step: r.step + 1, samplesSeen: r.samplesSeen, seed: recipe.data.seed, skippedSteps, fingerprint };
    await saveTrainingCheckpoint(runDir, full.model, full.optimizer, state);
  };
  const steps = await lastValueFrom(readBatches(sources.train, {
    seqLength: recipe.data.seqLength, globalBatchSize: t.globalBatchSize, microBatchSize: t.microBatchSize,
    startStep, maxSteps: stopAt + 1, credits, dpRank: dp, dpSize: layout.dp,
  }).pipe(
    bufferCount(numMicro),
    concatMap(async (micros: TokenBatch[]) => {
      // After an agreed stop the source drains what it had read (and bufferCount flushes a partial global batch).
      if (stoppedEarly || micros.length < numMicro) {
        for (const b of micros) disposeBatch(b);
        return null;
      }
      const r = await trainer.step(micros);
      for (const b of micros) disposeBatch(b);
      credits.release(micros.length);
      if (r.skipped) skippedSteps++;
      if (sources.valid && t.valCheckInterval > 0 && ((r.step + 1) % t.valCheckInterval === 0 || r.step === stopAt)) await validate(r.step);
      logs?.onStep(r);
      if (leader) o.onStep?.(r);
      const stop = trainer.stopAgreed;
      if (stop || r.step === stopAt || (r.step + 1) % recipe.trainer.saveInterval === 0) await checkpoint(r);
      if (stop && r.step < stopAt) {
        stoppedEarly = true;
        credits.close();
      }
      return r;
    }),
    filter((r): r is StepResult => r !== null),
    toArray(),
  ));
  const finalDir = join(runDir, 'student');
  const finished = !stoppedEarly && stopAt === lastStep;
  if (finished) {
    const full = await gatherFullState(coll, layout, rank, student, optimizer, 'final');
    if (full) await saveModel(full.model, finalDir, { dtype: 'float32' });
  }
  logs?.close(finished ? { studentDir: finalDir } : undefined);
  trainer.dispose();
  optimizer.dispose();
  for (const v of student.params.values()) v.dispose();
  for (const v of teacher?.params.values() ?? []) v.dispose();
  return leader ? { runDir, studentDir: finalDir, steps, validations: validationsDone, resumedFromStep: startStep, backend, stoppedEarly: !finished } : null;
}
