/**
 * One worker of a tensor/pipeline/context-parallel run (`distill run --tp_size 2 --pp_size 2 ...`): loads only its
 * slices of the student and the teacher and streams its data-parallel slice of the batches through the same
 * operators as a single worker, with `modelParallelBackward` (1F1B over the stages, collectives over the TP and
 * CP groups) in the place of the teacher stage, the loss and `backward`. The run directory, resume, logs and final
 * save are the same as a single worker's (src/train/prepareRun.ts); checkpoints are gathered into full tensors and
 * written by rank 0 in the same layout, so a run can resume with any layout and the student loads in `transformers`.
 */
import { lastValueFrom, tap, toArray } from 'rxjs';
import { selectBackend } from '../src/backend/select.ts';
import { readModelConfig } from '../src/checkpoint/load.ts';
import { saveModel } from '../src/checkpoint/save.ts';
import { coordsOf, type ParallelLayout } from '../src/parallel/layout.ts';
import { checkModelParallelRecipe } from '../src/recipe/validateLayout.ts';
import { DeviceCollectives } from '../src/parallel/nccl/deviceCollectives.ts';
import { ModelParallelTrainer } from '../src/parallel/modelParallel/modelParallelTrainer.ts';
import { gatherFullState, loadShardedOptimizerState, loadShardedPair } from '../src/parallel/modelParallel/shardedWeights.ts';
import type { Transport } from '../src/runtime/transport.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { learningRate, studentOptimizer } from '../src/recipe/trainingObjects.ts';
import { disposeBatch, type StepResult } from '../src/train/batch.ts';
import { Credits } from '../src/train/credits.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { prepareRun, runFingerprint } from '../src/train/prepareRun.ts';
import type { RunResult } from '../src/train/runResult.ts';
import { StepBarrier } from '../src/train/stepBarrier.ts';
import { saveTrainingCheckpoint } from '../src/train/trainingCheckpoint.ts';
import { alignVocabularies } from '../src/train/vocabularyCheck.ts';
import { readBatches } from '../operators/readBatches.ts';
import { modelParallelBackward } from '../operators/modelParallelBackward.ts';
import { optimizerStep } from '../operators/optimizerStep.ts';
import { validationTap } from '../operators/validationTap.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';

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
  const t = recipe.trainer;
  const prepared = prepareRun(recipe, { leader, log, progress: false, stopAfterSteps: o.stopAfterSteps });
  const teacherPath = recipe.kind === 'distill' && recipe.teacherPath ? recipe.teacherPath : null;
  // What one worker says of the two vocabularies (and refuses: sizes more than padding apart), before any weight loads.
  const vocabLine = teacherPath ? alignVocabularies(readModelConfig(teacherPath), readModelConfig(prepared.studentDir), recipe) : null;
  if (leader && vocabLine) log(vocabLine);
  if (leader && t.recomputeGranularity)
    log(
      `--recompute_granularity ${t.recomputeGranularity}: the tp/pp/cp layouts already run every op of the forward again in the backward (segmentTape.ts), so it changes nothing here`,
    );
  // Both padded to the pair's one vocabulary size under TP, so each rank holds the same ids of each (vocabPadding.ts).
  const { student, teacher } = loadShardedPair({
    student: prepared.studentDir,
    teacher: teacherPath,
    layout,
    rank,
    makeVocabSizeDivisibleBy: recipe.parallel.makeVocabSizeDivisibleBy,
  });
  const sources = openDataSources(recipe, student.config.vocabSize);
  const optimizer = studentOptimizer(recipe, student.params);
  prepared.resume(
    runFingerprint(recipe, sources.fingerprint),
    (ref) => optimizer.loadState(loadShardedOptimizerState(ref, student)),
    `, now as tp ${layout.tp} × pp ${layout.pp} × cp ${layout.cp} × dp ${layout.dp}`,
  );
  const { startStep, stopAt } = prepared;
  // Each group's reductions go over NCCL where the backend is cuda and NCCL loads, over our frames elsewhere.
  const coll = new DeviceCollectives(o.transport, { log: leader ? log : undefined });
  const trainer = new ModelParallelTrainer({
    layout,
    rank,
    coll,
    student,
    teacher,
    optimizer,
    loss: { ...recipe.loss, kdRatio: teacher ? recipe.loss.kdRatio : 0 },
    clipGrad: recipe.optim.clipGrad,
    nanPolicy: t.nanPolicy,
    globalBatchSize: t.globalBatchSize,
    lrAt: learningRate(recipe),
    stopRequested: o.stopRequested,
  });
  let stoppedEarly = false;
  let tag = 0;
  if (!prepared.alreadyFinished) {
    const numMicro = t.globalBatchSize / (t.microBatchSize * layout.dp);
    // A pipeline schedule holds a whole global batch: the in-flight window is at least one.
    const credits = new Credits(Math.max(t.inFlight, numMicro));
    const barrier = new StepBarrier();
    const pending: Promise<void>[] = [];
    let validations = 0;
    // Validation and checkpoints are collective: every rank runs them at the same steps.
    const validate = async (step: number) => {
      const valid = sources.valid!;
      const available = Math.floor(valid.numSamples / t.microBatchSize);
      const count = Math.max(1, Math.min(t.limitValBatches ?? available, available));
      const micros = await lastValueFrom(
        readBatches(valid, {
          seqLength: recipe.data.seqLength,
          globalBatchSize: t.microBatchSize,
          microBatchSize: t.microBatchSize,
          startStep: 0,
          maxSteps: count,
        }).pipe(toArray()),
      );
      try {
        return { step, ...(await trainer.evaluate(micros, validations++)) };
      } finally {
        for (const b of micros) disposeBatch(b);
      }
    };
    const checkpoint = async (r: StepResult): Promise<void> => {
      const full = await gatherFullState(coll, layout, rank, student, optimizer, `checkpoint ${tag++}`);
      if (full) await saveTrainingCheckpoint(prepared.runDir, full.model, full.optimizer, prepared.trainingState(r));
    };
    await lastValueFrom(
      readBatches(sources.train, {
        seqLength: recipe.data.seqLength,
        globalBatchSize: t.globalBatchSize,
        microBatchSize: t.microBatchSize,
        startStep,
        maxSteps: stopAt + 1,
        credits,
        dpRank: coordsOf(layout, rank).dp,
        dpSize: layout.dp,
      }).pipe(
        modelParallelBackward(trainer, { credits, stopped: () => stoppedEarly }),
        optimizerStep({
          optimizer,
          lrAt: learningRate(recipe),
          clipGrad: recipe.optim.clipGrad,
          nanPolicy: t.nanPolicy,
          globalBatchSize: t.globalBatchSize,
          reduce: trainer.reduction,
          barrier,
        }),
        validationTap({
          interval: sources.valid ? t.valCheckInterval : 0,
          lastStep: stopAt,
          validate,
          onValidation: (v) => {
            if (leader) prepared.onValidation(v);
          },
        }),
        metricsTap([
          ...(prepared.logs ? [prepared.logs] : []),
          {
            onStep: (r) => {
              prepared.onStep(r);
              if (leader) o.onStep?.(r);
              // Some rank asked to stop during this step (agreed in its all-reduce): every rank ends after it.
              if (trainer.stopAgreed && r.step < stopAt) {
                stoppedEarly = true;
                credits.close();
              }
            },
          },
        ]),
        checkpointSink({ saveInterval: t.saveInterval, lastStep: stopAt, save: checkpoint, pending }),
        tap((r) => barrier.release(r.step)),
        toArray(),
      ),
    ).finally(() => barrier.releaseAll());
    await Promise.all(pending);
  }
  const finished = await prepared.finish(stoppedEarly, async (dir) => {
    const full = await gatherFullState(coll, layout, rank, student, optimizer, 'final');
    if (full) await saveModel(full.model, dir, { dtype: 'float32' });
  });
  trainer.dispose();
  await coll.dispose();
  optimizer.dispose();
  for (const v of student.params.values()) v.dispose();
  for (const v of teacher?.params.values() ?? []) v.dispose();
  sources.train.close();
  sources.valid?.close();
  const steps = prepared.steps;
  return leader
    ? {
        runDir: prepared.runDir,
        studentDir: prepared.finalDir,
        steps,
        validations: prepared.validations,
        resumedFromStep: startStep,
        backend,
        stoppedEarly: !finished,
        alreadyFinished: prepared.alreadyFinished,
        lastStep: steps[steps.length - 1] ?? prepared.savedLastStep,
      }
    : null;
}
