/**
 * The checks of a TP/PP/CP layout that need the models' configs (validate.ts checks the flags alone): run before any
 * worker starts, so an impossible layout fails at once with the arithmetic.
 */
import { readModelConfig } from '../checkpoint/load.ts';
import { ConfigError } from '../errors.ts';
import { checkModelLayout, type ParallelLayout } from '../parallel/layout.ts';
import { pairedVocabSize } from '../parallel/modelParallel/vocabPadding.ts';
import type { DistillationRecipe } from './config.ts';

/** The layout of a recipe's student workers: DP is what remains of the workers after TP × PP × CP. */
export function layoutOf(recipe: DistillationRecipe): ParallelLayout {
  const p = recipe.parallel;
  const workers = p.devicesPerNode * p.numNodes;
  return { tp: p.tpSize, cp: p.cpSize, pp: p.ppSize, dp: workers / (p.tpSize * p.cpSize * p.ppSize) };
}

/** The refusals that need the models' configs: layouts they cannot take, and what model parallelism does not run. */
export function checkModelParallelRecipe(recipe: DistillationRecipe, layout: ParallelLayout): void {
  // Any vocabulary splits over TP once padded (vocabPadding.ts); teacher and student pad to the pair's one size.
  const student = readModelConfig(recipe.studentPath);
  const teacher = recipe.kind === 'distill' && recipe.teacherPath ? readModelConfig(recipe.teacherPath) : null;
  const padded = pairedVocabSize([student.vocabSize, ...(teacher ? [teacher.vocabSize] : [])], layout.tp, recipe.parallel.makeVocabSizeDivisibleBy);
  checkModelLayout(layout, { ...student, vocabSize: padded }, `the student ${recipe.studentPath}`);
  if (recipe.kind === 'distill' && recipe.teacherCache)
    throw new ConfigError(
      '--teacher_cache with --tp_size/--pp_size/--cp_size > 1 is not supported; distil from the cache with data parallelism only (--devices N)',
    );
  if (teacher) checkModelLayout(layout, { ...teacher, vocabSize: padded }, `the teacher ${recipe.teacherPath}`);
}
