// Typechecked only (tsc): the README's code examples compile against the library's exports.
import { distillationRecipe, run } from '../../index.ts';
import { filter, tap, lastValueFrom } from 'rxjs';
import { selectBackend, loadModel, createSampleSource, AdamW, readBatches, teacherLogits, studentForward,
  klLoss, backward, DEFAULT_KD_LOSS } from '../../index.ts';

await selectBackend('auto');
const teacher = await loadModel('teacher/', { trainable: false });   // frozen: never differentiated, never saved
const student = await loadModel('student/', { trainable: true });
const data = createSampleSource({ dataPaths: 'data/brown', seqLength: 128 });
const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: false });

await lastValueFrom(readBatches(data, { seqLength: 128, globalBatchSize: 16, microBatchSize: 8, startStep: 0, maxSteps: 100 }).pipe(
  filter((b) => b.position.firstSample % 7 !== 0),                       // your filter
  teacherLogits(teacher),
  studentForward(student),
  klLoss({ ...DEFAULT_KD_LOSS, kind: 'reverse_kl', kdRatio: 0.5, chunkSize: 256 }),   // your loss
  backward(student, { optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'skip', globalBatchSize: 16 }),
  tap((step) => console.log(step.step, step.loss)),                      // your tap
));

export async function recipeExample(): Promise<void> {
const recipe = distillationRecipe({ name: 'qwen-small', dir: 'runs', studentPath: 'student/', teacherPath: 'teacher/',
  data: { dataPaths: '0.3 data/web 0.7 data/books', seqLength: 2048 } });
recipe.trainer.maxSteps = 1000;
recipe.loss.temperature = 2;
await run(recipe);
}
