/**
 * The optimizer step at the end of each global batch: the gradients `backward` summed are reduced over the
 * data-parallel ranks, clipped by their global norm, checked against the NaN policy and applied by AdamW at the
 * scheduled learning rate (src/train/optimizerStep.ts, the step every layout takes). Emits one StepResult per
 * step.
 *
 * @example
 * lossBatches.pipe(backward(student), optimizerStep({ optimizer, lrAt: () => 1e-3, clipGrad: 1, nanPolicy: 'skip', globalBatchSize: 16 }))
 */
import { concatMap, defer, Observable, type OperatorFunction } from 'rxjs';
import type { GradientBatch, StepResult } from '../src/train/batch.ts';
import { OptimizerStep, type OptimizerStepOptions } from '../src/train/optimizerStep.ts';
import type { StepBarrier } from '../src/train/stepBarrier.ts';

export interface OptimizerStepOperatorOptions extends OptimizerStepOptions {
  /**
   * When given, each step result is emitted and then the next global batch's gradients wait until
   * `barrier.release(step)`: the runner releases it at the end of the pipeline, so checkpoints and validations see
   * that step's weights.
   */
  barrier?: StepBarrier;
}

/**
 * @param o the optimizer, the learning-rate schedule, clipping, the NaN policy (and data parallelism's all-reduce)
 * @return an operator from each global batch's gradients to its StepResult
 */
export function optimizerStep(o: OptimizerStepOperatorOptions): OperatorFunction<GradientBatch, StepResult> {
  return (source) =>
    defer(() => {
      // One per subscription: it counts the non-finite steps in a row of this run only.
      const step = new OptimizerStep(o);
      return source.pipe(
        concatMap(
          (g) =>
            new Observable<StepResult>((subscriber) => {
              step
                .take(g)
                .then(async (r) => {
                  subscriber.next(r);
                  if (o.barrier) await o.barrier.wait(r.step);
                  g.stepTaken();
                  subscriber.complete();
                })
                .catch((e: unknown) => subscriber.error(e));
            }),
        ),
      );
    });
}
