/**
 * Named compositions of the operators, and the runner that executes a recipe.
 */
export { distillPipeline } from './distill.ts';
export { distillFromCachePipeline } from './distillFromCache.ts';
export { cacheTeacher, writeTeacherCache, writeCacheManifest, type CacheTeacherArgs, type CacheTeacherResult, type WriteCacheOptions } from './cacheTeacher.ts';
export { pretrainPipeline } from './pretrain.ts';
export { evaluateOn, type EvaluationOptions, type EvaluationResult } from './evaluate.ts';
export { run, type RunHooks, type RunResult } from './run.ts';
export type { TrainingContext } from './context.ts';
