/**
 * The pipeline's stages, one RxJS operator per file. Compose them with `pipe` to build your own pipeline:
 * add a tap, change the loss, insert a filter (see the README).
 */
export { readBatches, tokenBatchFromRecords, type SampleSource, type ReadBatchesOptions } from './readBatches.ts';
export { teacherLogits } from './teacherLogits.ts';
export { cachedTeacherTargets, type CachedTeacherTargetsOptions, type CachedTeacherTargetsOperator } from './cachedTeacherTargets.ts';
export { studentForward } from './studentForward.ts';
export { klLoss, type KlLossOptions } from './klLoss.ts';
export { backward, NonFiniteLossError, type BackwardOptions, type NanPolicy } from './backward.ts';
export { checkpointSink, type CheckpointSinkOptions } from './checkpointSink.ts';
export { metricsTap, type MetricsSink } from './metricsTap.ts';
export { validationTap, type ValidationResult, type ValidationTapOptions } from './validationTap.ts';
