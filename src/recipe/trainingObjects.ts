/**
 * What the recipe makes for every layout: the student's AdamW and the learning-rate schedule.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { AdamW } from '../optim/adamw.ts';
import { cosineAnnealingLr } from '../optim/schedule.ts';
import type { DistillationRecipe } from './config.ts';

/** AdamW with the recipe's settings over the student's (or this rank's) parameters. */
export function studentOptimizer(recipe: DistillationRecipe, params: Map<string, tf.Variable>): AdamW {
  const o = recipe.optim;
  return new AdamW(params, { beta1: o.adamBeta1, beta2: o.adamBeta2, eps: o.adamEps, weightDecay: o.weightDecay, weightDecayAll: o.weightDecayAll });
}

/** The learning rate at each 0-based step: NeMo's cosine annealing with linear warm-up. */
export function learningRate(recipe: Pick<DistillationRecipe, 'optim' | 'trainer'>): (step: number) => number {
  const o = recipe.optim;
  return (s) => cosineAnnealingLr(s, { lr: o.lr, minLr: o.minLr, warmupSteps: o.warmupSteps, maxSteps: recipe.trainer.maxSteps });
}
