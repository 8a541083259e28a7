/**
 * The NaN policy under tensor and pipeline parallelism is the one-worker policy (src/train/optimizerStep.ts):
 * with a teacher whose final norm holds a NaN every step is non-finite, `skip` leaves every rank's weights
 * untouched, and the limit on non-finite steps in a row stops every rank at the same step with the same error.
 * Before the one optimizer step, model-parallel runs skipped such steps forever.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { readAllSafetensors, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { ModelParallelTrainer } from '../../src/parallel/modelParallel/modelParallelTrainer.ts';
import { loadShardedModel } from '../../src/parallel/modelParallel/shardedWeights.ts';
import { disposeBatch } from '../../src/train/batch.ts';
import { NonFiniteLossError } from '../../src/train/optimizerStep.ts';
import { fixture } from '../helpers/fixtures.ts';
import { fixtureBatches } from '../helpers/fixtureBatches.ts';

await selectBackend('cpu', { log: null });

/** A copy of llama-teacher with model.norm.weight[0] = NaN: every KD loss is NaN. */
function nanTeacher(root: string): string {
  const dir = join(root, 'nan-teacher');
  mkdirSync(dir);
  copyFileSync(fixture('llama-teacher', 'config.json'), join(dir, 'config.json'));
  const tensors: TensorToWrite[] = [...readAllSafetensors(fixture('llama-teacher', 'model.safetensors'))].map(([name, t]) => ({
    name,
    dtype: 'F32',
    shape: t.shape,
    data: Float32Array.from(t.data),
  }));
  tensors.find((t) => t.name === 'model.norm.weight')!.data[0] = NaN;
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  return dir;
}

const LIMIT = 3;

async function runUntilStopped(layout: ParallelLayout, teacherDir: string): Promise<{ errors: unknown[]; skipped: number[][]; unchanged: boolean[] }> {
  const transports = localTransports(worldSize(layout));
  const steps = LIMIT + 2;
  const batches = fixtureBatches(steps, 1);
  const ranks = transports.map((t, rank) => {
    const student = loadShardedModel(fixture('llama-student'), layout, rank, true);
    const teacher = loadShardedModel(teacherDir, layout, rank, false);
    const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: true });
    const trainer = new ModelParallelTrainer({
      layout,
      rank,
      coll: new Collectives(t),
      student,
      teacher,
      optimizer,
      loss: { ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 7 },
      clipGrad: 1,
      lrAt: () => 1e-3,
      nanPolicy: 'skip',
      maxConsecutiveNanSteps: LIMIT,
      globalBatchSize: 2,
    });
    const before = new Map([...student.params].map(([n, v]) => [n, v.dataSync().slice()]));
    return { student, teacher, optimizer, trainer, before };
  });
  try {
    const outcomes = await Promise.all(
      ranks.map(async (r) => {
        const skipped: number[] = [];
        try {
          for (let s = 0; s < steps; s++) {
            const res = await r.trainer.step(batches.filter((b) => b.position.step === s));
            if (res.skipped) skipped.push(res.step);
          }
          return { error: null as unknown, skipped };
        } catch (e) {
          return { error: e, skipped };
        }
      }),
    );
    const unchanged = ranks.map((r) =>
      [...r.student.params].every(([n, v]) => {
        const now = v.dataSync();
        const was = r.before.get(n)!;
        return now.every((x, i) => Object.is(x, was[i]));
      }),
    );
    return { errors: outcomes.map((o) => o.error), skipped: outcomes.map((o) => o.skipped), unchanged };
  } finally {
    for (const b of batches) disposeBatch(b);
    for (const r of ranks) {
      r.trainer.dispose();
      r.optimizer.dispose();
      for (const v of r.student.params.values()) v.dispose();
      for (const v of r.teacher.params.values()) v.dispose();
    }
  }
}

for (const layout of [
  { tp: 2, pp: 1, cp: 1, dp: 1 },
  { tp: 1, pp: 2, cp: 1, dp: 1 },
] satisfies ParallelLayout[]) {
  test(`under TP ${layout.tp} × PP ${layout.pp}, ${LIMIT} non-finite steps in a row stop every rank; skipped steps leave the weights`, async () => {
    const root = mkdtempSync(join(tmpdir(), 'mp-nan-'));
    const tensors = tf.memory().numTensors;
    try {
      const r = await runUntilStopped(layout, nanTeacher(root));
      for (const [rank, e] of r.errors.entries()) {
        assert.ok(e instanceof NonFiniteLossError, `rank ${rank} ended with ${String(e)}`);
        assert.match(
          (e as Error).message,
          new RegExp(
            `^step ${LIMIT}: loss NaN, grad_norm NaN: ${LIMIT} non-finite steps in a row; stopping\\. The weights are unchanged since the last finite step\\.$`,
          ),
        );
        assert.deepEqual(
          r.skipped[rank],
          Array.from({ length: LIMIT - 1 }, (_, i) => i),
          `rank ${rank}'s skipped steps before the stop`,
        );
        assert.ok(r.unchanged[rank], `rank ${rank}'s weights changed although every step was skipped`);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
    assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
  });
}
