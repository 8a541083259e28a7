/**
 * The heart of the mission, checked against PyTorch: 5 steps of distilling llama-student from llama-teacher with
 * the fixture's optimizer settings and mask must reproduce the fixture's loss and grad-norm trajectory (≤1e-4
 * relative) and its final weights (llama-student-after-5-steps, ≤1e-4 absolute). The pipeline is composed here
 * from the exported operators, as a user composes their own. With `--recompute_granularity selective` (core
 * attention recomputed in the backward, by hand-written gradients) and `full` (each layer run again in the
 * backward) the same trajectory, to the same tolerance.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { from, toArray, lastValueFrom } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { teacherTargets, attachStudent, klLoss, backward } from '../../operators/index.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { expectedJson, fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixtureBatches } from '../helpers/fixtureBatches.ts';
import { onEachBackend } from '../helpers/backends.ts';

for (const recompute of [null, 'selective', 'full'] as const) {
  test(`5 KD steps on the fixture pair match the PyTorch trajectory and final weights${recompute ? `, ${recompute} recomputation` : ''}`, async () => {
    const exp = expectedJson();
    await onEachBackend(async (backend) => {
      const before = tf.memory().numTensors;
      const student = await loadModel(fixture('llama-student'), { trainable: true, recompute });
      const teacher = await loadModel(fixture('llama-teacher'), { trainable: false });
      const tr = exp.train;
      const optimizer = new AdamW(student.params, { beta1: tr.betas[0], beta2: tr.betas[1], eps: tr.eps, weightDecay: tr.weight_decay, weightDecayAll: true });
      const steps = await lastValueFrom(
        from(fixtureBatches(tr.trajectory.length)).pipe(
          teacherTargets(teacher),
          attachStudent(student),
          klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 7 }),
          backward(student, { optimizer, lrAt: () => tr.lr, clipGrad: tr.clip_grad_norm, nanPolicy: 'stop', globalBatchSize: 2 }),
          toArray(),
        ),
      );
      assert.equal(steps.length, tr.trajectory.length);
      for (const [i, want] of tr.trajectory.entries()) {
        const rl = Math.abs(steps[i].loss - want.loss) / want.loss;
        const rg = Math.abs(steps[i].gradNorm - want.grad_norm) / want.grad_norm;
        assert.ok(rl <= 1e-4, `${backend} step ${i}: loss ${steps[i].loss} vs ${want.loss} (rel ${rl.toExponential(2)})`);
        assert.ok(rg <= 1e-4, `${backend} step ${i}: grad_norm ${steps[i].gradNorm} vs ${want.grad_norm} (rel ${rg.toExponential(2)})`);
      }
      const after = readAllSafetensors(fixture('llama-student-after-5-steps', 'model.safetensors'));
      let worst = 0;
      for (const [name, v] of student.params) {
        const ref = after.get(name);
        assert.ok(ref, `reference has no ${name}`);
        worst = Math.max(worst, maxAbsDiff(await v.data(), ref.data));
      }
      assert.ok(worst <= 1e-4, `${backend}: final weights differ by ${worst} (abs)`);
      optimizer.dispose();
      student.dispose();
      teacher.dispose();
      assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
    });
  });
}
