/**
 * Back-propagation through the student only, gradient accumulation over micro-batches, and the optimizer step at
 * the end of each global batch (global-norm clipping, then AdamW at the scheduled learning rate).
 *
 * Each micro-batch's loss arrives already weighted by its share of the global batch's loss tokens, so summing the
 * micro-batch gradients gives the gradient of the token-weighted mean over the whole global batch.
 */
import { concatMap, EMPTY, finalize, from, Observable, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { AdamW } from '../src/optim/adamw.ts';
import { clipGradNorm } from '../src/optim/clipGrad.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import { disposeBatch, type LossBatch, type StepResult } from '../src/train/batch.ts';
import type { Credits } from '../src/train/credits.ts';
import type { StepBarrier } from '../src/train/stepBarrier.ts';
import { inStage } from './stageErrors.ts';
import { DistillError } from '../src/errors.ts';

export type NanPolicy = 'skip' | 'stop';

export interface BackwardOptions {
  optimizer: AdamW;
  /** Learning rate for a 0-based step. */
  lrAt: (step: number) => number;
  clipGrad: number;
  nanPolicy: NanPolicy;
  /** Consecutive non-finite steps after which even `skip` stops. */
  maxConsecutiveNanSteps?: number;
  credits?: Credits;
  /** Samples per global batch, to report the data position. */
  globalBatchSize: number;
  /** Called after each step's gradients are final and before the optimizer uses them (data parallelism all-reduces here). */
  reduceGradients?: (grads: Map<string, tf.Tensor>) => Promise<void>;
  /**
   * When given, each step result is emitted and then the next micro-batch waits until `barrier.release(step)`:
   * the runner releases it at the end of the pipeline, so checkpoints and validations see that step's weights.
   */
  barrier?: StepBarrier;
}

export class NonFiniteLossError extends DistillError {}

export function backward(student: CausalLM, o: BackwardOptions): OperatorFunction<LossBatch, StepResult> {
  const names = new Map<string, string>();
  for (const [name, v] of student.params) names.set(v.name, name);
  const vars = student.trainableVariables();
  let acc: Map<string, tf.Tensor> | null = null;
  let lossSum = 0;
  let kdSum = 0;
  let ceSum = 0;
  let hasKd = false;
  let hasCe = false;
  let tokens = 0;
  let scalars: tf.Tensor[] = [];
  let kinds: ('loss' | 'kd' | 'ce')[] = [];
  let started = 0;
  let consecutiveNan = 0;
  const maxNan = o.maxConsecutiveNanSteps ?? 10;

  const step$ = concatMap((batch: LossBatch) => {
    const { step, micro, numMicro } = batch.position;
    if (micro === 0) {
      started = performance.now();
      acc = new Map();
      lossSum = kdSum = ceSum = tokens = 0;
    }
    let kd: tf.Scalar | undefined;
    let ce: tf.Scalar | undefined;
    const { value, grads } = inStage('backward', batch.position, () =>
      tf.variableGrads(() => {
        const parts = batch.loss();
        kd = parts.kd ? tf.keep(parts.kd) : undefined;
        ce = parts.ce ? tf.keep(parts.ce) : undefined;
        return parts.total;
      }, vars),
    );
    for (const [varName, g] of Object.entries(grads)) {
      const name = names.get(varName) ?? varName;
      const prev = acc!.get(name);
      if (prev) {
        acc!.set(name, tf.add(prev, g));
        prev.dispose();
        g.dispose();
      } else {
        acc!.set(name, g);
      }
    }
    // The step's scalars stay on the device until the step ends: one asynchronous readback per step, none per
    // micro-batch (webgpu in Node cannot read synchronously at all).
    const w = batch.tokens;
    scalars.push(value);
    if (kd) { scalars.push(tf.mul(kd as tf.Scalar, w)); hasKd = true; (kd as tf.Scalar).dispose(); }
    if (ce) { scalars.push(tf.mul(ce as tf.Scalar, w)); hasCe = true; (ce as tf.Scalar).dispose(); }
    kinds.push(...['loss', ...(kd ? ['kd'] : []), ...(ce ? ['ce'] : [])] as ('loss' | 'kd' | 'ce')[]);
    tokens += w;
    disposeBatch(batch);
    o.credits?.release();
    if (micro < numMicro - 1) return EMPTY;
    const result = (async (): Promise<StepResult> => {
      const grads = acc!;
      acc = null;
      const stacked = tf.stack(scalars);
      for (const t of scalars) t.dispose();
      const values = await stacked.data();
      stacked.dispose();
      for (const [i, kind] of kinds.entries()) {
        if (kind === 'loss') lossSum += values[i];
        else if (kind === 'kd') kdSum += values[i];
        else ceSum += values[i];
      }
      scalars = [];
      kinds = [];
      try {
        if (o.reduceGradients) await o.reduceGradients(grads);
        const gradNorm = await clipGradNorm(grads, o.clipGrad);
        const lr = o.lrAt(step);
        const finite = Number.isFinite(lossSum) && Number.isFinite(gradNorm);
        if (finite) {
          o.optimizer.apply(grads, lr);
          consecutiveNan = 0;
        } else {
          consecutiveNan++;
          const what = `step ${step}: loss ${lossSum}, grad_norm ${gradNorm}`;
          if (o.nanPolicy === 'stop') throw new NonFiniteLossError(`${what} is not finite; stopping (--nan_policy stop). Check the data batch at sample ${batch.position.firstSample} and the teacher's weights.`);
          if (consecutiveNan >= maxNan) throw new NonFiniteLossError(`${what}: ${consecutiveNan} non-finite steps in a row; stopping. The weights are unchanged since the last finite step.`);
        }
        return {
          step,
          loss: lossSum,
          kdLoss: hasKd ? kdSum / tokens : undefined,
          ceLoss: hasCe ? ceSum / tokens : undefined,
          gradNorm,
          lr,
          tokens,
          samplesSeen: (step + 1) * o.globalBatchSize,
          skipped: !finite,
          elapsedMs: performance.now() - started,
        };
      } finally {
        for (const g of grads.values()) g.dispose();
      }
    })();
    const barrier = o.barrier;
    if (!barrier) return from(result);
    return new Observable<StepResult>((subscriber) => {
      result.then((r) => {
        subscriber.next(r);
        return barrier.wait(r.step).then(() => subscriber.complete());
      }).catch((e: unknown) => subscriber.error(e));
    });
  });
  // A stream that ends mid-global-batch (a stop) leaves gradients accumulated for a step never taken.
  return (source) =>
    source.pipe(
      step$,
      finalize(() => {
        if (acc) for (const g of acc.values()) g.dispose();
        for (const t of scalars) t.dispose();
        acc = null;
        scalars = [];
      }),
    );
}
