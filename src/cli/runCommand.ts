/**
 * `distill run` and `distill pretrain`: flags → recipe → run. The same code path as the library's `run(recipe)`.
 */
import { parseFlags, usage } from './flags.ts';
import { RUN_FLAGS, recipeFromFlags } from './runFlags.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { run } from '../../pipelines/run.ts';

async function runKind(kind: 'distill' | 'pretrain', argv: string[]): Promise<void> {
  if (parseFlags(argv, RUN_FLAGS, `distill ${kind === 'distill' ? 'run' : 'pretrain'}`).flags.help) {
    console.log(usage(`distill ${kind === 'distill' ? 'run' : 'pretrain'}`, kind === 'distill' ? 'Distil a student from a frozen teacher.' : 'Train on next-token cross-entropy.', RUN_FLAGS));
    return;
  }
  const recipe = recipeFromFlags(kind, argv, defaultDataPaths);
  const r = await run(recipe);
  const last = r.steps[r.steps.length - 1];
  if (last) console.log(JSON.stringify({ run_dir: r.runDir, student: r.stoppedEarly ? null : r.studentDir, steps: last.step + 1, loss: last.loss, resumed_from_step: r.resumedFromStep }));
}

export const runMain = (argv: string[]): Promise<void> => runKind('distill', argv);
export const pretrainMain = (argv: string[]): Promise<void> => runKind('pretrain', argv);
