/**
 * Runs the fixture pair's 5 KD steps under a model-parallel layout with every rank in this process (in-process
 * transports: each message still crosses as an encoded frame), and the same steps on one worker through the
 * ordinary operators, so tests can compare the two.
 */
import { from, lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { backward, klLoss, studentForward, teacherLogits } from '../../operators/index.ts';
import type { KlLossOptions } from '../../operators/klLoss.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { coordsOf, worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { localTransports } from '../../src/parallel/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { ModelParallelTrainer } from '../../src/parallel/modelParallel/modelParallelTrainer.ts';
import { gatherFullState, loadShardedModel } from '../../src/parallel/modelParallel/shardedWeights.ts';
import type { StepResult, TokenBatch } from '../../src/train/batch.ts';
import { expectedJson, fixture } from '../helpers/fixtures.ts';
import { fixtureBatches } from '../helpers/fixtureBatches.ts';

export interface LayoutRun {
  steps: StepResult[];
  weights: Map<string, Float32Array>;
}

export function fixtureLoss(over: Partial<KlLossOptions> = {}): KlLossOptions {
  return { ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 7, ...over };
}

function optimizerFor(params: Map<string, tf.Variable>): AdamW {
  const tr = expectedJson().train;
  return new AdamW(params, { beta1: tr.betas[0], beta2: tr.betas[1], eps: tr.eps, weightDecay: tr.weight_decay, weightDecayAll: true });
}

/** The fixture's steps on one worker, through the pipeline's own operators. */
export async function oneWorker(steps: number, microPerStep: number, loss = fixtureLoss()): Promise<LayoutRun> {
  const tr = expectedJson().train;
  const student = await loadModel(fixture('llama-student'), { trainable: true });
  const teacher = await loadModel(fixture('llama-teacher'), { trainable: false });
  const optimizer = optimizerFor(student.params);
  const results = await lastValueFrom(from(fixtureBatches(steps, microPerStep)).pipe(
    teacherLogits(teacher), studentForward(student), klLoss(loss),
    backward(student, { optimizer, lrAt: () => tr.lr, clipGrad: tr.clip_grad_norm, nanPolicy: 'stop', globalBatchSize: 2 }),
    toArray(),
  ));
  const weights = new Map<string, Float32Array>();
  for (const [n, v] of student.params) weights.set(n, (await v.data()) as Float32Array);
  optimizer.dispose();
  student.dispose();
  teacher.dispose();
  return { steps: results, weights };
}

/** The same steps with every rank of `layout` in this process; micro-batches are dealt to the DP ranks in turn. */
export async function underLayout(layout: ParallelLayout, steps: number, microPerStep: number, loss = fixtureLoss()): Promise<LayoutRun> {
  const tr = expectedJson().train;
  const n = worldSize(layout);
  const transports = localTransports(n);
  const batches = fixtureBatches(steps, microPerStep);
  const ranks = transports.map((t, rank) => {
    const coll = new Collectives(t);
    const student = loadShardedModel(fixture('llama-student'), layout, rank, true);
    const teacher = loadShardedModel(fixture('llama-teacher'), layout, rank, false);
    const optimizer = optimizerFor(student.params);
    const trainer = new ModelParallelTrainer({
      layout, rank, coll, student, teacher, loss, optimizer, clipGrad: tr.clip_grad_norm, lrAt: () => tr.lr, nanPolicy: 'stop', globalBatchSize: 2,
    });
    return { rank, coll, student, teacher, optimizer, trainer };
  });
  try {
    const perRank = await Promise.all(ranks.map(async (r) => {
      const dp = coordsOf(layout, r.rank).dp;
      const out: StepResult[] = [];
      for (let s = 0; s < steps; s++) {
        const mine: TokenBatch[] = batches.filter((b) => b.position.step === s && b.position.micro % layout.dp === dp);
        out.push(await r.trainer.step(mine));
      }
      const full = await gatherFullState(r.coll, layout, r.rank, r.student, r.optimizer, 'final');
      const weights = new Map<string, Float32Array>();
      if (full) for (const [name, t] of full.model.params) weights.set(name, (await t.data()) as Float32Array);
      return { steps: out, weights };
    }));
    return perRank[0];
  } finally {
    for (const b of batches) { b.inputIds.dispose(); b.labels.dispose(); b.lossMask.dispose(); }
    for (const r of ranks) {
      r.trainer.dispose();
      r.optimizer.dispose();
      for (const v of r.student.params.values()) v.dispose();
      for (const v of r.teacher.params.values()) v.dispose();
    }
  }
}
