/**
 * `distill run` and `distill pretrain`: flags → recipe → run. The same code path as the library's `run(recipe)`.
 */
import { existsSync, readdirSync, rmdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseFlags, usage } from './flags.ts';
import { PRETRAIN_FLAGS, RUN_FLAGS, recipeFromFlags } from './runFlags.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import type { DistillationRecipe } from '../recipe/config.ts';
import { validateRecipe } from '../recipe/validate.ts';
import { checkModelsFitSequence } from '../train/sequenceLengthCheck.ts';

async function runKind(kind: 'distill' | 'pretrain', argv: string[]): Promise<void> {
  const command = `distill ${kind === 'distill' ? 'run' : 'pretrain'}`;
  if (parseFlags(argv, RUN_FLAGS, command).flags.help) {
    console.log(
      kind === 'distill'
        ? usage(command, 'Distil a student from a frozen teacher.', RUN_FLAGS)
        : usage(command, 'Train a model on next-token cross-entropy (no teacher).', PRETRAIN_FLAGS),
    );
    return;
  }
  const recipe = recipeFromFlags(kind, argv, defaultDataPaths);
  validateRecipe(recipe);
  checkModelsFitSequence(recipe);
  // Loaded only now, so that --help and flag mistakes answer without starting tfjs.
  const { run } = await import('../../pipelines/run.ts');
  const r = await removingEmptyRunDir(recipe, () => run(recipe));
  // lastStep, not this invocation's steps: a finished run run again trains nothing and still reports where it ended.
  const last = r.lastStep;
  if (last)
    console.log(
      JSON.stringify({
        run_dir: r.runDir,
        student: r.stoppedEarly ? null : r.studentDir,
        steps: last.step + 1,
        loss: last.loss,
        resumed_from_step: r.resumedFromStep,
      }),
    );
}

/**
 * Runs `body`; when it fails, removes `<log_dir>/<name>/` (and `<log_dir>/`) if this invocation created them and
 * they hold no file, so a mistyped path does not leave an empty run folder that looks like a run.
 */
async function removingEmptyRunDir<T>(recipe: DistillationRecipe, body: () => Promise<T>): Promise<T> {
  const logDir = resolve(recipe.logDir);
  const runDir = join(logDir, recipe.name);
  const created = [runDir, logDir].filter((d) => !existsSync(d));
  try {
    return await body();
  } catch (e) {
    for (const d of created) removeIfNoFiles(d);
    throw e;
  }
}

/** Removes `dir` when it, and every folder under it, holds no file. */
function removeIfNoFiles(dir: string): void {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) return;
    removeIfNoFiles(join(dir, e.name));
  }
  if (readdirSync(dir).length === 0) rmdirSync(dir);
}

export const runMain = (argv: string[]): Promise<void> => runKind('distill', argv);
export const pretrainMain = (argv: string[]): Promise<void> => runKind('pretrain', argv);
