// README.md's TypeScript block 1, copied by test/docs/readmeBlocks.ts --write for `npm run typecheck`; do not edit here.
import { filter, tap, lastValueFrom } from 'rxjs';
import { selectBackend, loadModel, createSampleSource, AdamW, readBatches, teacherTargets, attachStudent,
  klLoss, backward, optimizerStep, DEFAULT_KD_LOSS } from 'logit-distill';

await selectBackend('auto');
const teacher = await loadModel('../shared/fixtures/llama-teacher', { trainable: false });   // frozen: never differentiated, never saved
const student = await loadModel('../shared/fixtures/llama-student', { trainable: true });
const data = createSampleSource({ dataPaths: '../shared/fixtures/megatron/small_text_document', seqLength: 16 });
const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: false });

await lastValueFrom(readBatches(data, { seqLength: 16, globalBatchSize: 4, microBatchSize: 2, startStep: 0, maxSteps: 12 }).pipe(
  filter((b) => b.position.step % 3 !== 2),                                        // your filter: skip every third step
  teacherTargets(teacher),
  attachStudent(student),                                                          // the student's forward, run by backward
  klLoss({ ...DEFAULT_KD_LOSS, kind: 'reverse_kl', kdRatio: 0.5, chunkSize: 0 }),   // your loss (chunkSize 0: sized by memory)
  backward(student),                                                               // gradients of each global batch
  optimizerStep({ optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'skip', globalBatchSize: 4 }),
  tap((step) => console.log(step.step, step.loss)),                                // your tap
));
