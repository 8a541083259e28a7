/**
 * NeMo's CosineAnnealing with linear warm-up (nemo.core.optim.lr_scheduler.CosineAnnealing, which NeMo 2.0's
 * CosineAnnealingScheduler wraps), reproduced so that a NeMo user gets the same learning rate at every step:
 *   step ≤ warmup:  lr · (step + 1) / (warmup + 1)
 *   step > max:     min_lr
 *   otherwise:      min_lr + (lr − min_lr) · ½(1 + cos(π · (step − warmup − constant) / (max − warmup − constant)))
 */
export interface CosineScheduleOptions {
  lr: number;
  minLr: number;
  warmupSteps: number;
  constantSteps?: number;
  maxSteps: number;
}

export function cosineAnnealingLr(step: number, o: CosineScheduleOptions): number {
  const constant = o.constantSteps ?? 0;
  if (o.warmupSteps > 0 && step <= o.warmupSteps) return (o.lr * (step + 1)) / (o.warmupSteps + 1);
  if (step > o.maxSteps) return o.minLr;
  if (step <= o.warmupSteps + constant) return o.lr;
  const span = o.maxSteps - o.warmupSteps - constant;
  if (span <= 0) return o.minLr;
  const t = Math.min(1, (step - o.warmupSteps - constant) / span);
  return o.minLr + (o.lr - o.minLr) * 0.5 * (1 + Math.cos(Math.PI * t));
}
