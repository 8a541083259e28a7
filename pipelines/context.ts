/**
 * The settings a training pipeline's operators share, and how a run builds them from its recipe. Kept apart from
 * the composition so that `distill.ts` reads as a list of stages and NeMo's four steps.
 */
import type { CausalLM } from '../src/model/causalLM.ts';
import type { AdamW } from '../src/optim/adamw.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { learningRate } from '../src/recipe/trainingObjects.ts';
import type { StepResult } from '../src/train/batch.ts';
import type { Credits } from '../src/train/credits.ts';
import type { DataSources } from '../src/train/dataSources.ts';
import type { PreparedRun } from '../src/train/prepareRun.ts';
import type { StepBarrier } from '../src/train/stepBarrier.ts';
import { saveTrainingCheckpoint } from '../src/train/trainingCheckpoint.ts';
import type { DataParallelRank } from '../src/parallel/dataParallelRank.ts';
import type { ReadBatchesOptions } from '../operators/readBatches.ts';
import type { KlLossOptions } from '../operators/klLoss.ts';
import type { OptimizerStepOperatorOptions } from '../operators/optimizerStep.ts';
import type { BackwardGradientOptions } from '../operators/backward.ts';
import type { ValidationTapOptions } from '../operators/validationTap.ts';
import type { MetricsSink } from '../operators/metricsTap.ts';
import type { CheckpointSinkOptions } from '../operators/checkpointSink.ts';
import { evaluateOn } from './evaluate.ts';

export interface TrainingContext {
  /** The source's options; its `credits` are given back by `backward`, one per micro-batch. */
  read: ReadBatchesOptions;
  loss: KlLossOptions;
  /** The backward pass: the credits it gives back, whether it measures the norm, the reduction that starts in it. */
  backward: BackwardGradientOptions;
  /** The optimizer step: AdamW, schedule, clipping, NaN policy, data parallelism's all-reduce, the step barrier. */
  step: OptimizerStepOperatorOptions;
  validation: ValidationTapOptions;
  sinks: MetricsSink[];
  checkpoint: CheckpointSinkOptions;
}

export interface ContextParts {
  recipe: DistillationRecipe;
  run: PreparedRun;
  student: CausalLM;
  /** The teacher in this process, for validation's KD divergence (null: cached, remote or none). */
  teacher: CausalLM | null;
  sources: DataSources;
  optimizer: AdamW;
  credits: Credits;
  barrier: StepBarrier;
  /** Checkpoint writes started at teardown; the runner awaits them. */
  pending: Promise<void>[];
  /** This process is one data-parallel rank of several. */
  dp?: DataParallelRank;
  onStep?: (r: StepResult) => void;
}

/** The context of a run in this process (one worker, or one data-parallel rank): only rank 0 writes. */
export function trainingContext(p: ContextParts): TrainingContext {
  const { recipe, run, student, sources, dp } = p;
  const t = recipe.trainer;
  const sinks: MetricsSink[] = [
    ...(run.logs ? [run.logs] : []),
    {
      onStep: (r) => {
        run.onStep(r);
        p.onStep?.(r);
      },
    },
  ];
  return {
    read: {
      seqLength: recipe.data.seqLength,
      globalBatchSize: t.globalBatchSize,
      microBatchSize: t.microBatchSize,
      startStep: run.startStep,
      maxSteps: run.stopAt + 1,
      credits: p.credits,
      ...dp?.readSlice,
    },
    loss: recipe.loss,
    backward: {
      credits: p.credits,
      // One worker reads the norm with the loss; data parallelism measures it after the all-reduce.
      gradNorm: !dp,
      reductionDuringBackward: dp?.reductionDuringBackward,
    },
    step: {
      optimizer: p.optimizer,
      clipGrad: recipe.optim.clipGrad,
      nanPolicy: t.nanPolicy,
      globalBatchSize: t.globalBatchSize,
      lrAt: learningRate(recipe),
      reduceGradients: dp?.reduceGradients,
      barrier: p.barrier,
    },
    validation: {
      interval: sources.valid && run.leader ? t.valCheckInterval : 0,
      lastStep: run.stopAt,
      validate: async (step) => ({
        step,
        ...(await evaluateOn(student, p.teacher, sources.valid!, {
          ...recipe.loss,
          seqLength: recipe.data.seqLength,
          microBatchSize: t.microBatchSize,
          limitBatches: t.limitValBatches,
        })),
      }),
      onValidation: (v) => run.onValidation(v),
    },
    // A data-parallel rank's sinks see each step once rank 0 has summed the ranks' losses.
    sinks: dp ? [dp.gatherSteps(sinks)] : sinks,
    checkpoint: {
      saveInterval: t.saveInterval,
      lastStep: run.stopAt,
      pending: p.pending,
      save: run.leader
        ? async (r) => {
            await saveTrainingCheckpoint(run.runDir, student, p.optimizer, run.trainingState(r));
          }
        : async () => {},
    },
  };
}
