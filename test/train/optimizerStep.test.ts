/**
 * The one optimizer step (src/train/optimizerStep.ts) and its operator: clipping by the global norm as
 * torch.nn.utils.clip_grad_norm_ does, the limit on non-finite steps in a row (a finite step resets it), and the
 * count kept per subscription, so one operator used in two pipelines never carries one's count into the other.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { from, lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import type { AdamW } from '../../src/optim/adamw.ts';
import type { GradientBatch } from '../../src/train/batch.ts';
import { NonFiniteLossError, OptimizerStep } from '../../src/train/optimizerStep.ts';
import { optimizerStep } from '../../operators/optimizerStep.ts';

await selectBackend('cpu', { log: null });

/** An AdamW stand-in that records the gradients it steps with (each scaled by the clipping coefficient it is given). */
function recorder(): { optimizer: AdamW; applied: { grads: Map<string, number[]>; lr: number }[] } {
  const applied: { grads: Map<string, number[]>; lr: number }[] = [];
  const optimizer = {
    apply(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
      applied.push({ grads: new Map([...grads].map(([k, g]) => [k, Array.from(g.dataSync(), (x) => Math.fround(x * gradScale))])), lr });
    },
  } as unknown as AdamW;
  return { optimizer, applied };
}

/** A global batch whose one gradient is `values` and whose loss is `loss`. */
function batch(step: number, values: number[], loss: number): GradientBatch {
  return {
    step,
    grads: new Map([['w', tf.tensor1d(values)]]),
    sums: { loss, kd: loss * 4, tokens: 4 },
    firstSample: step * 2,
    startedAt: performance.now(),
    stepTaken: () => {},
  };
}

test('clipping: the pre-clip norm is reported, the gradients reach AdamW scaled by max_norm / (norm + 1e-6)', async () => {
  const { optimizer, applied } = recorder();
  const step = new OptimizerStep({ optimizer, lrAt: (s) => 0.1 * (s + 1), clipGrad: 1, nanPolicy: 'stop', globalBatchSize: 2 });
  const r = await step.take(batch(3, [3, 4], 2));
  assert.equal(r.gradNorm, 5);
  assert.equal(r.lr, 0.1 * 4);
  assert.equal(r.kdLoss, 2);
  assert.equal(r.ceLoss, undefined);
  assert.equal(r.samplesSeen, 8);
  const coef = 1 / (5 + 1e-6);
  const [g0, g1] = applied[0].grads.get('w')!;
  assert.ok(Math.abs(g0 - 3 * coef) < 1e-6 && Math.abs(g1 - 4 * coef) < 1e-6, `${g0}, ${g1}`);
  // Under the threshold nothing is scaled.
  await step.take(batch(4, [0.3, 0.4], 2));
  assert.deepEqual(
    applied[1].grads.get('w')!.map((x) => Math.round(x * 1e6) / 1e6),
    [0.3, 0.4],
  );
});

test('the limit on non-finite steps in a row: skipped steps leave AdamW alone, a finite step resets the count', async () => {
  const { optimizer, applied } = recorder();
  const step = new OptimizerStep({ optimizer, lrAt: () => 1, clipGrad: 1, nanPolicy: 'skip', maxConsecutiveNanSteps: 2, globalBatchSize: 2 });
  assert.equal((await step.take(batch(0, [1, 1], NaN))).skipped, true);
  assert.equal((await step.take(batch(1, [1, 1], 1))).skipped, false);
  assert.equal((await step.take(batch(2, [NaN, 1], 1))).skipped, true);
  assert.equal(applied.length, 1, 'only the finite step reached AdamW');
  await assert.rejects(step.take(batch(3, [1, 1], Infinity)), (e: unknown) => {
    assert.ok(e instanceof NonFiniteLossError);
    assert.equal(
      (e as Error).message,
      'step 4: loss Infinity, grad_norm 1.4142135381698608: 2 non-finite steps in a row; stopping. The weights are unchanged since the last finite step.',
    );
    return true;
  });
});

test('the operator keeps its count per subscription: one operator in two pipelines does not add their non-finite steps', async () => {
  const before = tf.memory().numTensors;
  const { optimizer } = recorder();
  const op = optimizerStep({ optimizer, lrAt: () => 1, clipGrad: 1, nanPolicy: 'skip', maxConsecutiveNanSteps: 2, globalBatchSize: 2 });
  const first = await lastValueFrom(from([batch(0, [1, 1], 1), batch(1, [1, 1], NaN)]).pipe(op, toArray()));
  assert.deepEqual(
    first.map((r) => r.skipped),
    [false, true],
  );
  // A shared count would make this the second non-finite step in a row, and stop.
  const second = await lastValueFrom(from([batch(0, [1, 1], NaN), batch(1, [1, 1], 1)]).pipe(op, toArray()));
  assert.deepEqual(
    second.map((r) => r.skipped),
    [true, false],
  );
  await assert.rejects(lastValueFrom(from([batch(0, [1, 1], NaN), batch(1, [1, 1], NaN)]).pipe(op, toArray())), NonFiniteLossError);
  assert.equal(tf.memory().numTensors, before, 'the step disposes the gradients it is given');
});
