/**
 * The settings a training pipeline's operators share, built once by the runner from a recipe. Kept apart from
 * the compositions so that `distill.ts` and `pretrain.ts` read as a list of stages.
 */
import type { ReadBatchesOptions } from '../operators/readBatches.ts';
import type { KlLossOptions } from '../operators/klLoss.ts';
import type { BackwardOptions } from '../operators/backward.ts';
import type { ValidationTapOptions } from '../operators/validationTap.ts';
import type { MetricsSink } from '../operators/metricsTap.ts';
import type { CheckpointSinkOptions } from '../operators/checkpointSink.ts';

export interface TrainingContext {
  read: ReadBatchesOptions;
  loss: KlLossOptions;
  backward: BackwardOptions;
  validation: ValidationTapOptions;
  sinks: MetricsSink[];
  checkpoint: CheckpointSinkOptions;
}
