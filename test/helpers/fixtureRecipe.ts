/**
 * The recipe the run-level tests train: the fixture pair (llama-student from llama-teacher) on the Megatron fixture
 * at sequence length 16, split 80,20,0, seed 7, with a fast schedule (lr 1e-3 → 1e-4, one warm-up step), on cpu.
 * A caller passes its dir, name and trainer (whole: no trainer defaults here beyond distillationRecipe's) and any
 * other field; its fields override these (data and optim field by field; teacherPath: undefined leaves none, as a
 * teacher-cache run needs), and distillationRecipe fills the rest.
 */
import { distillationRecipe, type DistillationRecipe } from '../../src/recipe/config.ts';
import { fixture } from './fixtures.ts';

export function fixturePairRecipe(o: Partial<Parameters<typeof distillationRecipe>[0]> & { dir: string; name: string }): DistillationRecipe {
  return distillationRecipe({
    studentPath: fixture('llama-student'),
    teacherPath: fixture('llama-teacher'),
    backend: 'cpu',
    ...o,
    data: { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7, ...o.data },
    optim: { lr: 1e-3, minLr: 1e-4, warmupSteps: 1, ...o.optim },
  });
}
