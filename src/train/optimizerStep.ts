/**
 * The optimizer step, the one every layout takes: a global batch's gradients are reduced over the ranks that
 * share the step, clipped by their global norm, checked against the NaN policy, and handed to AdamW at the
 * scheduled learning rate; the outcome is a StepResult. The `optimizerStep` operator takes it for a single
 * process and for data parallelism; ModelParallelTrainer takes it for TP/PP/CP with its own reduction (its
 * gradients are slices, so the norm and the loss sums are all-reduced over every rank).
 *
 * What differs between layouts is only the reduction; the clipping rule, the NaN policy (including the limit on
 * non-finite steps in a row) and the result are written here once. The micro-batches' gradients arrive already
 * summed over the global batch: by `backward` (one process, data parallelism) or by the 1F1B tape of a model-
 * parallel stage, each micro-batch's loss weighted by its share of the global batch's tokens.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { AdamW } from '../optim/adamw.ts';
import { clipCoefficient, globalNorm } from '../optim/clipGrad.ts';
import { DistillError } from '../errors.ts';
import type { StepGradients, StepLossSums, StepResult } from './batch.ts';
import type { ParameterGradientHook } from '../model/causalLM.ts';

export type NanPolicy = 'skip' | 'stop';

/** A step whose loss or gradient norm is not finite, under `--nan_policy stop` or after too many in a row. */
export class NonFiniteLossError extends DistillError {}

/** Non-finite steps in a row after which even `--nan_policy skip` stops the run. */
export const DEFAULT_MAX_CONSECUTIVE_NON_FINITE = 10;

/**
 * Sums a step's gradients over the ranks that computed parts of it and returns the pre-clip global gradient norm
 * (what NeMo logs as grad_norm) with the loss sums over the same ranks.
 */
/**
 * Data parallelism's reduction when it starts during the backward pass (PyTorch DDP, Megatron's
 * overlap_grad_reduce). `backward` asks `hookFor()` before each step's last micro-batch's backward pass: the
 * hook gets each parameter's final gradient for the step (every micro-batch summed in) as the backward pass
 * finishes it; null means this step's gradients are reduced after the backward pass. Either way the step's
 * `reduceGradients` ends the reduction.
 */
export interface ReductionDuringBackward {
  hookFor(): ParameterGradientHook | null;
}

export type GradientReduction = (grads: Map<string, tf.Tensor>, sums: StepLossSums) => Promise<{ gradNorm: number; sums: StepLossSums }>;

export interface OptimizerStepOptions {
  optimizer: AdamW;
  /** Learning rate for a 0-based step. */
  lrAt: (step: number) => number;
  /** Global-norm clipping threshold; 0 turns clipping off. */
  clipGrad: number;
  nanPolicy: NanPolicy;
  /** Non-finite steps in a row after which even `skip` stops (default 10). */
  maxConsecutiveNanSteps?: number;
  /** Samples per global batch, to report the data position. */
  globalBatchSize: number;
  /**
   * Data parallelism: sums the gradients over the ranks before the norm (each micro-batch's loss is already
   * weighted by its share of the global batch, so a sum gives the global mean's gradient).
   */
  reduceGradients?: (grads: Map<string, tf.Tensor>) => Promise<void>;
  /** Model parallelism: the whole reduction (slices summed where Megatron sums them, the norm over every rank). */
  reduce?: GradientReduction;
}

/** One run's optimizer step; it keeps the count of non-finite steps in a row, so make one per run (or subscription). */
export class OptimizerStep {
  private consecutiveNonFinite = 0;
  private readonly reduce: GradientReduction;

  constructor(private readonly o: OptimizerStepOptions) {
    this.reduce =
      o.reduce ??
      (async (grads, sums) => {
        if (o.reduceGradients) await o.reduceGradients(grads);
        const normT = globalNorm(grads.values());
        const gradNorm = (await normT.data())[0];
        normT.dispose();
        return { gradNorm, sums };
      });
  }

  async take(g: StepGradients): Promise<StepResult> {
    const { step, grads } = g;
    try {
      // The norm backward read with the loss holds for one worker; a reduction measures it after reducing.
      const local = g.gradNorm !== undefined && !this.o.reduce && !this.o.reduceGradients;
      const { gradNorm, sums } = local ? { gradNorm: g.gradNorm!, sums: g.sums } : await this.reduce(grads, g.sums);
      const lr = this.o.lrAt(step);
      const finite = Number.isFinite(sums.loss) && Number.isFinite(gradNorm);
      if (finite) {
        this.o.optimizer.apply(grads, lr, clipCoefficient(gradNorm, this.o.clipGrad));
        this.consecutiveNonFinite = 0;
      } else {
        this.consecutiveNonFinite++;
        const what = `step ${step + 1}: loss ${sums.loss}, grad_norm ${gradNorm}`;
        if (this.o.nanPolicy === 'stop') {
          throw new NonFiniteLossError(
            `${what} is not finite; stopping (--nan_policy stop). Check the data batch at sample ${g.firstSample} and the teacher's weights.`,
          );
        }
        const limit = this.o.maxConsecutiveNanSteps ?? DEFAULT_MAX_CONSECUTIVE_NON_FINITE;
        if (this.consecutiveNonFinite >= limit) {
          throw new NonFiniteLossError(
            `${what}: ${this.consecutiveNonFinite} non-finite steps in a row; stopping. The weights are unchanged since the last finite step.`,
          );
        }
      }
      const perToken = (sum: number | undefined): number | undefined => (sum === undefined ? undefined : sums.tokens > 0 ? sum / sums.tokens : 0);
      return {
        step,
        loss: sums.loss,
        kdLoss: perToken(sums.kd),
        ceLoss: perToken(sums.ce),
        gradNorm,
        lr,
        tokens: sums.tokens,
        samplesSeen: (step + 1) * this.o.globalBatchSize,
        skipped: !finite,
        elapsedMs: performance.now() - g.startedAt,
      };
    } finally {
      for (const t of grads.values()) t.dispose();
    }
  }
}
