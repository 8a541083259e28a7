/**
 * `run(recipe)`: executes a distillation (or pretraining) recipe end to end. With several devices (or a teacher of
 * its own) it launches one worker per device (src/runtime/launcher.ts) running pipelines/workerProgram.ts: each is
 * a data-parallel rank of `distillInThisProcess`, or a model-parallel rank (modelParallelRun.ts). Otherwise the
 * run is `distillInThisProcess` (pipelines/distill.ts, NeMo's four steps) in this process.
 */
import { fileURLToPath } from 'node:url';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { validateRecipe } from '../src/recipe/validate.ts';
import { checkModelParallelRecipe, layoutOf } from '../src/recipe/validateLayout.ts';
import type { RunResult } from '../src/train/runResult.ts';
import { checkModelsFitSequence } from '../src/train/sequenceLengthCheck.ts';
import { launchWorkers, type LaunchHooks } from '../src/runtime/launcher.ts';
import { checkOneNode } from '../src/runtime/launchEnv.ts';
import { needsWorkers } from '../src/parallel/placement.ts';
import { distillInThisProcess, type DistillHooks } from './distill.ts';

// Kept for one release at their 0.1 paths: the result types live in src/train/runResult.ts, the recipe's objects
// in src/recipe/trainingObjects.ts.
export type { RunResult, ValidationResult } from '../src/train/runResult.ts';
export { learningRate, studentOptimizer } from '../src/recipe/trainingObjects.ts';
export { runFingerprint } from '../src/train/prepareRun.ts';

export interface RunHooks extends DistillHooks, Omit<LaunchHooks, 'program' | keyof DistillHooks> {}

/** What a worker process runs, handed to the launcher by path (the runtime never imports the pipelines). */
const WORKER_PROGRAM = fileURLToPath(new URL('./workerProgram.ts', import.meta.url));

export async function run(recipe: DistillationRecipe, hooks: RunHooks = {}): Promise<RunResult> {
  validateRecipe(recipe);
  // As the CLI: a --seq_length past either model's position range is refused before any weight loads.
  checkModelsFitSequence(recipe);
  const layout = layoutOf(recipe);
  if (layout.tp * layout.pp * layout.cp > 1) checkModelParallelRecipe(recipe, layout);
  checkOneNode(recipe.parallel.numNodes);
  // Several devices, or a teacher of its own: one worker per device.
  if (needsWorkers(recipe)) return launchWorkers(recipe, { ...hooks, program: WORKER_PROGRAM });
  return distillInThisProcess(recipe, hooks);
}
