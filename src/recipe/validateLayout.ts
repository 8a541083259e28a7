/**
 * The checks of a TP/PP/CP layout that need the models' configs (validate.ts checks the flags alone): run before any
 * worker starts, so an impossible layout fails at once with the arithmetic.
 */
import { readModelConfig } from '../checkpoint/load.ts';
import { ConfigError } from '../errors.ts';
import { checkModelLayout, type ParallelLayout } from '../parallel/layout.ts';
import type { DistillationRecipe } from './config.ts';

/** The layout of a recipe's student workers: DP is what remains of the workers after TP × PP × CP. */
export function layoutOf(recipe: DistillationRecipe): ParallelLayout {
  const p = recipe.parallel;
  const workers = p.devicesPerNode * p.numNodes;
  return { tp: p.tpSize, cp: p.cpSize, pp: p.ppSize, dp: workers / (p.tpSize * p.cpSize * p.ppSize) };
}

/** The refusals that need the models' configs: layouts they cannot take, and what model parallelism does not run. */
export function checkModelParallelRecipe(recipe: DistillationRecipe, layout: ParallelLayout): void {
  const student = readModelConfig(recipe.studentPath);
  checkModelLayout(layout, student, `the student ${recipe.studentPath}`);
  if (recipe.kind === 'distill' && recipe.teacherCache) throw new ConfigError('--teacher_cache with --tp_size/--pp_size/--cp_size > 1 is not supported; distil from the cache with data parallelism only (--devices N)');
  if (recipe.kind === 'distill' && recipe.teacherPath) {
    const teacher = readModelConfig(recipe.teacherPath);
    checkModelLayout(layout, teacher, `the teacher ${recipe.teacherPath}`);
    if (layout.tp > 1 && teacher.vocabSize !== student.vocabSize) {
      throw new ConfigError(`with --tp_size ${layout.tp} the teacher's and student's vocabularies must be the same size to split the same way (teacher ${teacher.vocabSize}, student ${student.vocabSize})`);
    }
  }
}

