/**
 * The one composition of the operators, its 0.1 named forms, the runner that executes a recipe, and the other jobs.
 */
export { distillPipeline, type TeacherStage } from './distill.ts';
export { distillFromCachePipeline } from './distillFromCache.ts';
export { cacheTeacher, writeTeacherCache, writeCacheManifest, type CacheTeacherArgs, type CacheTeacherResult, type WriteCacheOptions } from './cacheTeacher.ts';
export { pretrainPipeline } from './pretrain.ts';
export { evaluateOn, type EvaluationOptions, type EvaluationResult } from './evaluate.ts';
export { run, type RunHooks, type RunResult } from './run.ts';
export type { TrainingContext } from './context.ts';
