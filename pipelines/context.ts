/**
 * The settings a training pipeline's operators share, built once by the runner from a recipe (src/train/
 * prepareRun.ts and pipelines/run.ts). Kept apart from the composition so that `distill.ts` reads as a list of
 * stages.
 */
import type { ReadBatchesOptions } from '../operators/readBatches.ts';
import type { KlLossOptions } from '../operators/klLoss.ts';
import type { OptimizerStepOperatorOptions } from '../operators/optimizerStep.ts';
import type { ValidationTapOptions } from '../operators/validationTap.ts';
import type { MetricsSink } from '../operators/metricsTap.ts';
import type { CheckpointSinkOptions } from '../operators/checkpointSink.ts';

export interface TrainingContext {
  /** The source's options; its `credits` are given back by `backward`, one per micro-batch. */
  read: ReadBatchesOptions;
  loss: KlLossOptions;
  /** The optimizer step: AdamW, schedule, clipping, NaN policy, data parallelism's all-reduce, the step barrier. */
  step: OptimizerStepOperatorOptions;
  validation: ValidationTapOptions;
  sinks: MetricsSink[];
  checkpoint: CheckpointSinkOptions;
}
