/**
 * The pipeline's stages, one RxJS operator per file. Compose them with `pipe` to build your own pipeline:
 * add a tap, change the loss, insert a filter (see the README).
 */
export { readBatches, tokenBatchFromRecords, type SampleSource, type ReadBatchesOptions } from './readBatches.ts';
export { teacherTargets, teacherLogits } from './teacherTargets.ts';
export { cachedTeacherTargets, type CachedTeacherTargetsOptions, type CachedTeacherTargetsOperator } from './cachedTeacherTargets.ts';
export { attachStudent, studentForward } from './attachStudent.ts';
export { klLoss, type KlLossOptions } from './klLoss.ts';
export { backward, type BackwardGradientOptions, type BackwardOptions } from './backward.ts';
export { optimizerStep, type OptimizerStepOperatorOptions } from './optimizerStep.ts';
export { modelParallelBackward, type ModelParallelBackwardOptions } from './modelParallelBackward.ts';
export { NonFiniteLossError, type NanPolicy } from '../src/train/optimizerStep.ts';
export { checkpointSink, type CheckpointSinkOptions } from './checkpointSink.ts';
export { metricsTap, type MetricsSink } from './metricsTap.ts';
export { validationTap, type ValidationResult, type ValidationTapOptions } from './validationTap.ts';
