// README.md's TypeScript block 2, copied by test/docs/readmeBlocks.ts --write for `npm run typecheck`; do not edit here.
import { distillationRecipe, run } from 'logit-distill';

const recipe = distillationRecipe({ name: 'recipe-demo', dir: 'runs', studentPath: '../shared/fixtures/llama-student',
  teacherPath: '../shared/fixtures/llama-teacher',
  data: { dataPaths: '../shared/fixtures/megatron/small_text_document', seqLength: 16, split: '80,20,0' } });
recipe.trainer.maxSteps = 10;
recipe.trainer.globalBatchSize = 4;
recipe.loss.temperature = 2;
const result = await run(recipe);
console.log(`student: ${result.studentDir}, final loss ${result.steps.at(-1)?.loss}`);
