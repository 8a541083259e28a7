/**
 * What differs between the recipe a checkpoint was made with and the one resuming it, and what that does. What
 * cannot be right (other models, data, sequence length or global batch) is refused by the checkpoint's
 * fingerprint (src/train/trainingCheckpoint.ts); this names the rest, so that a changed --lr or --kd_loss is never
 * taken without a word. Settings that do not change the training (logging, checkpoint and validation intervals,
 * the in-flight window, the backend, the parallel layout, the loss's chunk size) are not mentioned.
 */
import type { DistillationRecipe } from './config.ts';
import { learningRate } from './trainingObjects.ts';

type Field = { flag: string; get: (r: DistillationRecipe) => unknown };

const SCHEDULE: Field[] = [
  { flag: '--max_steps', get: (r) => r.trainer.maxSteps },
  { flag: '--lr', get: (r) => r.optim.lr },
  { flag: '--min_lr', get: (r) => r.optim.minLr },
  { flag: '--warmup_steps', get: (r) => r.optim.warmupSteps },
];

const OPTIMIZER: Field[] = [
  { flag: '--adam_beta1', get: (r) => r.optim.adamBeta1 },
  { flag: '--adam_beta2', get: (r) => r.optim.adamBeta2 },
  { flag: '--adam_eps', get: (r) => r.optim.adamEps },
  { flag: '--weight_decay', get: (r) => r.optim.weightDecay },
  { flag: '--weight_decay_all', get: (r) => r.optim.weightDecayAll },
  { flag: '--clip_grad', get: (r) => r.optim.clipGrad },
];

const LOSS: Field[] = [
  { flag: '--kd_loss', get: (r) => r.loss.kind },
  { flag: '--kd_ratio', get: (r) => r.loss.kdRatio },
  { flag: '--temperature', get: (r) => r.loss.temperature },
  { flag: '--temperature_scaling', get: (r) => r.loss.scaleByTemperatureSquared },
  { flag: '--jsd_beta', get: (r) => r.loss.jsdBeta },
  { flag: '--skew_lambda', get: (r) => r.loss.skewLambda },
];

const NUMERICS: Field[] = [{ flag: '--precision', get: (r) => r.trainer.precision }];

function changed(fields: Field[], saved: DistillationRecipe, now: DistillationRecipe): string[] {
  return fields.filter((f) => f.get(saved) !== f.get(now)).map((f) => `${f.flag} ${String(f.get(saved))} → ${String(f.get(now))}`);
}

/**
 * One line per kind of change between `saved` (the checkpoint's recipe) and `now`, each saying what it does from
 * `step` (the first step this run takes) on; empty when nothing that matters changed.
 */
export function describeResumeChanges(saved: DistillationRecipe, now: DistillationRecipe, step: number): string[] {
  const lines: string[] = [];
  const schedule = changed(SCHEDULE, saved, now);
  if (schedule.length) {
    const before = learningRate(saved)(step);
    const after = learningRate(now)(step);
    lines.push(
      `the learning-rate schedule changed (${schedule.join(', ')}): step ${step + 1} runs at lr ${after.toExponential(2)} where the checkpoint's schedule gives ${before.toExponential(2)}`,
    );
  }
  const optimizer = changed(OPTIMIZER, saved, now);
  if (optimizer.length) lines.push(`the optimizer changed (${optimizer.join(', ')}): AdamW continues from the saved moments with the new settings`);
  const loss = changed(LOSS, saved, now);
  if (loss.length) lines.push(`the loss changed (${loss.join(', ')}): the losses logged from step ${step + 1} on do not compare with those before`);
  const numerics = changed(NUMERICS, saved, now);
  if (numerics.length) lines.push(`the matmul precision changed (${numerics.join(', ')}): the numerics change from step ${step + 1} on`);
  return lines;
}
