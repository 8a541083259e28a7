/**
 * What a training step and a validation write to each of a run's outputs: the metrics.jsonl record, the TensorBoard
 * scalars and the console line. One place decides the step number and the names, so metrics.jsonl, TensorBoard, the
 * console, the report and the checkpoint names (`step-N`) agree: a step is numbered by the optimizer steps done,
 * 1..N, and validation after step N carries N.
 *
 * The pipeline's own step index is 0-based (sample positions are step × global batch); it becomes the count of
 * steps done here, and nowhere else.
 */
import type { TrainRecord, ValidRecord } from './metricsLog.ts';

/** The figures of one optimizer step, as the training pipeline reports them (src/train/batch.ts's StepResult). */
export interface StepFigures {
  /** 0-based index of the step in the pipeline. */
  step: number;
  loss: number;
  kdLoss?: number;
  ceLoss?: number;
  gradNorm: number;
  lr: number;
  tokens: number;
  elapsedMs: number;
}

/** The figures of one validation, as the validation stage reports them (operators/validationTap.ts). */
export interface ValidationFigures {
  /** 0-based index of the step after which validation ran. */
  step: number;
  studentCe: number;
  kdLoss?: number;
  tokens?: number;
}

/** A TensorBoard scalar set; undefined values are left out by the writer. */
export type Scalars = Record<string, number | undefined>;

export interface StepRecords {
  /** Optimizer steps done, 1..N: the metrics record's step and the TensorBoard step. */
  step: number;
  record: TrainRecord;
  scalars: Scalars;
}

export interface ValidationRecords {
  /** The optimizer steps done when validation ran, 1..N. */
  step: number;
  record: ValidRecord;
  scalars: Scalars;
  /** The console line. */
  line: string;
}

/** The step number every output uses: optimizer steps done. */
export const stepsDone = (pipelineStep: number): number => pipelineStep + 1;

export function stepRecords(r: StepFigures): StepRecords {
  const step = stepsDone(r.step);
  const tokensPerS = r.tokens / (r.elapsedMs / 1000);
  const record: TrainRecord = { step, loss: r.loss, kd_loss: r.kdLoss, ce_loss: r.ceLoss, grad_norm: r.gradNorm, lr: r.lr, tokens_per_s: tokensPerS };
  const scalars: Scalars = {
    'train/loss': r.loss,
    'train/kd_loss': r.kdLoss,
    'train/ce_loss': r.ceLoss,
    'train/grad_norm': r.gradNorm,
    'train/lr': r.lr,
    'train/tokens_per_s': tokensPerS,
  };
  return { step, record, scalars };
}

/** `maxSteps` (the run's total) is shown as "after step 10/20" on the console. */
export function validationRecords(v: ValidationFigures, maxSteps?: number): ValidationRecords {
  const step = stepsDone(v.step);
  const ppl = Math.exp(v.studentCe);
  const record: ValidRecord = { split: 'valid', step, val_ce_loss: v.studentCe, val_ppl: ppl, val_kd_loss: v.kdLoss };
  const scalars: Scalars = { 'valid/ce_loss': v.studentCe, 'valid/ppl': ppl, 'valid/kd_loss': v.kdLoss };
  const parts = [`val_ce_loss ${v.studentCe.toFixed(4)} (ppl ${ppl.toFixed(1)})`];
  if (v.kdLoss !== undefined) parts.push(`val_kd_loss ${v.kdLoss.toFixed(4)}`);
  if (v.tokens !== undefined) parts.push(`${v.tokens} tokens`);
  const line = `validation after step ${step}${maxSteps !== undefined ? `/${maxSteps}` : ''} | ${parts.join(' | ')}`;
  return { step, record, scalars, line };
}

/** The console line for a step skipped under --nan_policy skip. */
export function skippedStepLine(r: StepFigures): string {
  return `step ${stepsDone(r.step)}: non-finite loss or gradient (loss ${r.loss}, grad_norm ${r.gradNorm}); step skipped`;
}
