/**
 * Issue 23, item 1: a user's `filter` upstream of `backward` drops micro-batches. A step is the micro-batches that
 * arrive for it, weighted by the tokens that arrive: with the learning rate at 0 (weights fixed), a step made of one
 * micro-batch has exactly that micro-batch's loss and gradient norm, a step made of both has their mean, and a step
 * of which nothing arrives is absent. Dropping the first micro-batch of a step used to crash (a null accumulator);
 * dropping the last one used to merge the step into the next.
 * And the README's pipeline as written (its filter, sizes 16/8 and 4/2) runs on the fixtures.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { filter, lastValueFrom, tap, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { backward, klLoss, optimizerStep, readBatches, attachStudent, teacherTargets, type SampleSource } from '../../operators/index.ts';
import type { StepResult, TokenBatch } from '../../src/train/batch.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { createSampleSource } from '../../src/data/sampleSource.ts';
import type { CausalLM } from '../../src/model/causalLM.ts';
import { fixture } from '../helpers/fixtures.ts';

await selectBackend('cpu', { log: null });
const student = await loadModel(fixture('llama-student'), { trainable: true });
const teacher = await loadModel(fixture('llama-teacher'), { trainable: false });
const data: SampleSource = createSampleSource({ dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, vocabSize: 1000 });

/** Steps of the fixture pair at learning rate 0 (AdamW without decay: the weights never move). */
async function steps(m: CausalLM, o: { gbs: number; mbs: number; steps: number; keep: (b: TokenBatch) => boolean }): Promise<StepResult[]> {
  const optimizer = new AdamW(m.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, weightDecayAll: false });
  try {
    return await lastValueFrom(
      readBatches(data, { seqLength: 16, globalBatchSize: o.gbs, microBatchSize: o.mbs, startStep: 0, maxSteps: o.steps }).pipe(
        filter((b) => {
          const kept = o.keep(b);
          if (!kept) {
            b.inputIds.dispose();
            b.labels.dispose();
            b.lossMask.dispose();
          }
          return kept;
        }),
        teacherTargets(teacher),
        attachStudent(m),
        klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 0.5, chunkSize: 16 }),
        backward(m),
        optimizerStep({ optimizer, lrAt: () => 0, clipGrad: 0, nanPolicy: 'stop', globalBatchSize: o.gbs }),
        toArray(),
      ),
    );
  } finally {
    optimizer.dispose();
  }
}

const close = (a: number, b: number, what: string): void => {
  assert.ok(Math.abs(a - b) <= 1e-5 * Math.abs(b), `${what}: ${a} vs ${b}`);
};

test('a step is the micro-batches that arrive for it, weighted by their tokens; a step with none is absent', async () => {
  // One micro-batch per step: the reference loss and gradient of each micro-batch (samples 2k, 2k + 1). It also
  // makes the models' one-time caches (the frozen teacher head's transpose), which the count below leaves out.
  const micro = await steps(student, { gbs: 2, mbs: 2, steps: 8, keep: () => true });
  const before = tf.memory().numTensors;
  // Two per step. Step 0 loses its first micro-batch, step 1 its last, step 2 both, step 3 none.
  const dropped = new Set(['0/0', '1/1', '2/0', '2/1']);
  const got = await steps(student, { gbs: 4, mbs: 2, steps: 4, keep: (b) => !dropped.has(`${b.position.step}/${b.position.micro}`) });
  assert.deepEqual(
    got.map((r) => r.step),
    [0, 1, 3],
    'step 2, of which nothing arrived, is absent',
  );
  const [s0, s1, s3] = got;
  close(s0.loss, micro[1].loss, 'step 0 = its second micro-batch alone');
  close(s0.gradNorm, micro[1].gradNorm, 'step 0 gradient norm');
  assert.equal(s0.tokens, micro[1].tokens);
  close(s1.loss, micro[2].loss, 'step 1 = its first micro-batch alone (its last was dropped)');
  close(s1.gradNorm, micro[2].gradNorm, 'step 1 gradient norm');
  close(s1.kdLoss!, micro[2].kdLoss!, 'step 1 KD term');
  close(s1.ceLoss!, micro[2].ceLoss!, 'step 1 CE term');
  close(s3.loss, (micro[6].loss + micro[7].loss) / 2, 'step 3 = the mean of both (equal tokens)');
  assert.equal(s3.tokens, micro[6].tokens + micro[7].tokens);
  assert.equal(tf.memory().numTensors, before, 'tensors leaked (dropped micro-batches and partial steps dispose theirs)');
});

test("the README's pipeline as written (filter on firstSample % 7, sizes 16/8 and 4/2) trains on the fixtures", async () => {
  // 16/8 for one step (its first micro-batch is dropped: the crash); 4/2 for four (step 3 loses its last).
  for (const [gbs, mbs, maxSteps] of [
    [16, 8, 1],
    [4, 2, 4],
  ]) {
    const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: false });
    const seen: number[] = [];
    const results = await lastValueFrom(
      readBatches(data, { seqLength: 16, globalBatchSize: gbs, microBatchSize: mbs, startStep: 0, maxSteps }).pipe(
        filter((b) => b.position.firstSample % 7 !== 0),
        teacherTargets(teacher),
        attachStudent(student),
        klLoss({ ...DEFAULT_KD_LOSS, kind: 'reverse_kl', kdRatio: 0.5, chunkSize: 256 }),
        backward(student, { optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'skip', globalBatchSize: gbs }),
        tap((step) => seen.push(step.step)),
        toArray(),
      ),
    );
    optimizer.dispose();
    assert.deepEqual(seen, [0, 1, 2, 3].slice(0, maxSteps), `${gbs}/${mbs}: every step has a micro-batch that arrives`);
    assert.ok(
      results.every((r) => Number.isFinite(r.loss) && !r.skipped && r.loss > 0),
      `${gbs}/${mbs}: ${JSON.stringify(results.map((r) => r.loss))}`,
    );
  }
});
