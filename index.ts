/**
 * The library: recipes and the runner, the operators to compose your own pipeline, and the engine pieces they
 * stand on (backends, models, checkpoints, data, losses, optimizer).
 */
export { distillationRecipe, pretrainRecipe, DEFAULTS, type DistillationRecipe } from './src/recipe/config.ts';
export {
  run,
  distillPipeline,
  pretrainPipeline,
  evaluateOn,
  type RunHooks,
  type RunResult,
  type TeacherStage,
  type TrainingContext,
} from './pipelines/index.ts';
export * from './operators/index.ts';
export { selectBackend, type BackendChoice, type BackendReport } from './src/backend/select.ts';
export { loadModel } from './src/checkpoint/load.ts';
export { saveModel } from './src/checkpoint/save.ts';
export type { CausalLM } from './src/model/causalLM.ts';
export { createSampleSource } from './src/data/sampleSource.ts';
export { AdamW } from './src/optim/adamw.ts';
export { cosineAnnealingLr } from './src/optim/schedule.ts';
export { Credits } from './src/train/credits.ts';
export { OptimizerStep, type OptimizerStepOptions } from './src/train/optimizerStep.ts';
export type { StepResult, TokenBatch, TeacherBatch, LossBatch, GradientBatch } from './src/train/batch.ts';
export { kdLossFromHidden } from './src/losses/chunkedKd.ts';
export { DEFAULT_KD_LOSS, KD_LOSS_KINDS, type KdLossOptions, type KdLossKind } from './src/losses/types.ts';
export * from './src/errors.ts';
