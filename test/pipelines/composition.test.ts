/**
 * Users compose their own pipelines from the exported operators: a custom one (a filter, a tap, another loss)
 * trains the fixture pair; a slow stage slows the source instead of letting batches pile up; and a long run's
 * tensor count stays flat.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { concatMap, filter, lastValueFrom, map, tap, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { readBatches, teacherTargets, attachStudent, klLoss, backward, NonFiniteLossError, type SampleSource } from '../../operators/index.ts';
import type { LossBatch } from '../../src/train/batch.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { Credits } from '../../src/train/credits.ts';
import { StepBarrier } from '../../src/train/stepBarrier.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { createSampleSource } from '../../src/data/sampleSource.ts';
import { fixture } from '../helpers/fixtures.ts';

const data = (): SampleSource => createSampleSource({ dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, vocabSize: 1000 });

async function models() {
  await selectBackend('cpu', { log: null });
  const student = await loadModel(fixture('llama-student'), { trainable: true });
  const teacher = await loadModel(fixture('llama-teacher'), { trainable: false });
  const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, weightDecayAll: false });
  const dispose = (): void => {
    optimizer.dispose();
    student.dispose();
    teacher.dispose();
  };
  return { student, teacher, optimizer, dispose };
}

test('a custom pipeline (filter + reverse KL + a tap) trains the fixture pair and lowers its loss', async () => {
  const { student, teacher, optimizer, dispose } = await models();
  const seen: number[] = [];
  // The same two samples every step, so the loss is comparable from step to step.
  const d = data();
  const fixed: SampleSource = { numSamples: 2, sample: (i) => d.sample(i % 2) };
  const steps = await lastValueFrom(
    readBatches(fixed, { seqLength: 16, globalBatchSize: 2, microBatchSize: 2, startStep: 0, maxSteps: 12 }).pipe(
      filter((b) => b.position.step % 3 !== 2), // a user's filter: skip every third batch
      teacherTargets(teacher),
      attachStudent(student),
      klLoss({ ...DEFAULT_KD_LOSS, kind: 'reverse_kl', kdRatio: 0.5, chunkSize: 8 }),
      backward(student, { optimizer, lrAt: () => 1e-2, clipGrad: 1, nanPolicy: 'stop', globalBatchSize: 2 }),
      tap((r) => seen.push(r.step)),
      toArray(),
    ),
  );
  assert.deepEqual(seen, [0, 1, 3, 4, 6, 7, 9, 10]);
  assert.ok(
    steps.every((s) => s.kdLoss !== undefined && s.ceLoss !== undefined),
    'KD and CE both reported at α = 0.5',
  );
  const [first, last] = [steps[0].loss, steps[steps.length - 1].loss];
  assert.ok(last < first, `0.5·CE + 0.5·reverse KL fell on the repeated batch: ${first} → ${last}`);
  dispose();
});

test('a slow stage slows the source: in-flight micro-batches never exceed the credit limit; tensors stay flat', async () => {
  const { student, teacher, optimizer, dispose } = await models();
  const credits = new Credits(3);
  let read = 0;
  let done = 0;
  let worst = 0;
  const counts: number[] = [];
  await lastValueFrom(
    readBatches(data(), { seqLength: 16, globalBatchSize: 4, microBatchSize: 1, startStep: 0, maxSteps: 10, credits }).pipe(
      tap(() => {
        read++;
        worst = Math.max(worst, read - done);
      }),
      teacherTargets(teacher),
      // A slow stage: 15 ms per micro-batch.
      concatMap(async (b) => {
        await new Promise((r) => setTimeout(r, 15));
        return b;
      }),
      attachStudent(student),
      klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 16 }),
      tap(() => {
        done++;
      }),
      backward(student, { optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'stop', credits, globalBatchSize: 4 }),
      tap(() => counts.push(tf.memory().numTensors)),
      toArray(),
    ),
  );
  assert.equal(read, 40);
  assert.ok(credits.maxInFlight <= 3, `credits held at once: ${credits.maxInFlight}`);
  assert.ok(worst <= 3, `micro-batches read but not yet through the loss: ${worst}`);
  // Flat while the pipeline is full; the last step has no next micro-batches in flight.
  assert.equal(new Set(counts.slice(1, -1)).size, 1, `tensor count per step: ${counts.join(' ')}`);
  dispose();
});

test('with a StepBarrier, a slow stage after backward reads exactly the weights of the step it was given', async () => {
  const { student, teacher, optimizer, dispose } = await models();
  const barrier = new StepBarrier();
  const credits = new Credits(4);
  const name = [...student.params.keys()][0];
  const atStep = new Map<number, Float32Array>();
  const seenLater = new Map<number, Float32Array>();
  await lastValueFrom(
    readBatches(data(), { seqLength: 16, globalBatchSize: 2, microBatchSize: 1, startStep: 0, maxSteps: 5, credits }).pipe(
      teacherTargets(teacher),
      attachStudent(student),
      klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 16 }),
      backward(student, { optimizer, lrAt: () => 1e-2, clipGrad: 1, nanPolicy: 'stop', globalBatchSize: 2, barrier, credits }),
      tap((r) => atStep.set(r.step, student.params.get(name)!.dataSync().slice() as Float32Array)),
      // A slow checkpoint-like stage: it reads the weights only after 30 ms.
      concatMap(async (r) => {
        await new Promise((res) => setTimeout(res, 30));
        seenLater.set(r.step, (await student.params.get(name)!.data()).slice() as Float32Array);
        return r;
      }),
      tap((r) => barrier.release(r.step)),
      toArray(),
    ),
  );
  assert.equal(atStep.size, 5);
  for (const [step, w] of atStep) assert.deepEqual(seenLater.get(step), w, `step ${step}: weights moved under the slow stage`);
  assert.notDeepEqual(atStep.get(0), atStep.get(4), 'the weights did change between steps');
  dispose();
});

test('an error in a stage ends the pipeline with the stage name and the batch position', async () => {
  const { student, teacher, optimizer, dispose } = await models();
  const broken = {
    ...teacher,
    hidden: (ids: tf.Tensor2D): tf.Tensor3D => {
      if (ids.shape[0] > 0) throw new Error('teacher exploded');
      return teacher.hidden(ids);
    },
  };
  await assert.rejects(
    lastValueFrom(
      readBatches(data(), { seqLength: 16, globalBatchSize: 2, microBatchSize: 1, startStep: 3, maxSteps: 5 }).pipe(
        teacherTargets(broken),
        attachStudent(student),
        klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 16 }),
        backward(student, { optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'stop', globalBatchSize: 2 }),
      ),
    ),
    /teacherTargets failed at step 4, micro-batch 1 of 2, first sample 6: teacher exploded/,
  );
  dispose();
});

test('a non-finite loss skips the step (weights unchanged) under --nan_policy skip, and stops under stop', async () => {
  const { student, teacher, optimizer, dispose } = await models();
  const poison = (b: LossBatch): LossBatch =>
    b.position.step === 1
      ? {
          ...b,
          loss: () => {
            const p = b.loss();
            return { ...p, total: tf.mul(p.total, NaN) as tf.Scalar };
          },
        }
      : b;
  const name = [...student.params.keys()][1];
  const before = new Map<number, Float32Array>();
  const pipeline = (policy: 'skip' | 'stop') =>
    readBatches(data(), { seqLength: 16, globalBatchSize: 2, microBatchSize: 2, startStep: 0, maxSteps: 3 }).pipe(
      teacherTargets(teacher),
      attachStudent(student),
      klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 16 }),
      map(poison),
      tap((b) => before.set(b.position.step, student.params.get(name)!.dataSync().slice() as Float32Array)),
      backward(student, { optimizer, lrAt: () => 1e-2, clipGrad: 1, nanPolicy: policy, globalBatchSize: 2 }),
      toArray(),
    );
  const steps = await lastValueFrom(pipeline('skip'));
  assert.deepEqual(
    steps.map((s) => s.skipped),
    [false, true, false],
  );
  assert.deepEqual(before.get(2), before.get(1), 'the skipped step left the weights as they were');
  await assert.rejects(lastValueFrom(pipeline('stop')), NonFiniteLossError);
  dispose();
});
