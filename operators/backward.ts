/**
 * Back-propagation through the student only: each micro-batch's loss function (built by the stages before) runs
 * under one gradient tape, and its gradients are summed over the micro-batches of the global batch. At the end
 * of a global batch `backward` hands the sum on to `optimizerStep` and waits until the step is taken, so the next
 * global batch's gradients are taken at the new weights.
 *
 * What a step is when stages upstream drop micro-batches (a user's `filter`): the micro-batches of that global
 * batch that arrive, weighted by the tokens that arrive. A global batch ends with its last micro-batch, or, when
 * that one was dropped, when a micro-batch of a later global batch arrives or the stream ends. A global batch of
 * which nothing arrives is no step: its number is absent from the results. A stage that drops micro-batches
 * should dispose their tensors, and give back their credits when the source hands them out (`credits.release()`): the
 * source waits for credits that only arrive micro-batches return. Under data parallelism every rank must see all of
 * its micro-batches (the tokens that arrive are counted per rank); the runner's pipeline drops none.
 *
 * @example
 * readBatches(source, read).pipe(teacherTargets(teacher), attachStudent(student), klLoss(loss),
 *   backward(student), optimizerStep({ optimizer, lrAt, clipGrad: 1, nanPolicy: 'skip', globalBatchSize: 16 }))
 */
import { concat, concatMap, defer, EMPTY, finalize, Observable, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../src/model/causalLM.ts';
import { disposeBatch, type BatchPosition, type GradientBatch, type LossBatch, type StepResult } from '../src/train/batch.ts';
import type { Credits } from '../src/train/credits.ts';
import { NonFiniteLossError, type NanPolicy, type ReductionDuringBackward } from '../src/train/optimizerStep.ts';
import { optimizerStep, type OptimizerStepOperatorOptions } from './optimizerStep.ts';
import { inStage } from './stageErrors.ts';
import { globalNorm } from '../src/optim/clipGrad.ts';

// Kept here for one release: they moved to src/train/optimizerStep.ts.
export { NonFiniteLossError, type NanPolicy };

export interface BackwardGradientOptions {
  /** The source's credits: one is given back per micro-batch once its gradients are summed. */
  credits?: Credits;
  /**
   * Also measure the gradients' global norm and read it back with the step's loss: one readback a step instead of
   * two, and the norm's work queued behind the backward pass instead of after a wait. For one worker, whose
   * optimizerStep clips by this norm as it is; under data or model parallelism the norm is taken after the
   * gradients are reduced, so leave it off there (optimizerStep ignores it when it reduces).
   */
  gradNorm?: boolean;
  /**
   * Data parallelism: the reduction that starts during the step's last backward pass (DataParallelRank's, over
   * NCCL). The student's parameters then pass through gradient hooks for that pass (CausalLM.withGradientHooks).
   */
  reductionDuringBackward?: ReductionDuringBackward;
}

/** The 0.1 options: backward and the optimizer step in one operator. Use `backward(student)` + `optimizerStep(o)`. */
export type BackwardOptions = OptimizerStepOperatorOptions & BackwardGradientOptions;

/** @deprecated since 0.2: `backward(student, { credits })` then `optimizerStep(options)`; kept for one release. */
export function backward(student: CausalLM, o: BackwardOptions): OperatorFunction<LossBatch, StepResult>;
/** The gradients of each global batch, for `optimizerStep`. */
export function backward(student: CausalLM, o?: BackwardGradientOptions): OperatorFunction<LossBatch, GradientBatch>;
export function backward(
  student: CausalLM,
  o: BackwardGradientOptions | BackwardOptions = {},
): OperatorFunction<LossBatch, GradientBatch> | OperatorFunction<LossBatch, StepResult> {
  if ('optimizer' in o) {
    const gradients = backwardGradients(student, { credits: o.credits, gradNorm: !o.reduceGradients && !o.reduce });
    const step = optimizerStep(o);
    return (source) => source.pipe(gradients, step);
  }
  return backwardGradients(student, o);
}

/** The step being summed: its gradients by parameter name, and its loss scalars, still on the device. */
interface OpenStep {
  position: BatchPosition;
  grads: Map<string, tf.Tensor>;
  /** Per micro-batch: the weighted loss, then kd·tokens and ce·tokens when the loss has them. */
  scalars: tf.Scalar[];
  hasKd: boolean;
  hasCe: boolean;
  micros: number;
  tokens: number;
  globalBatchTokens: number;
  startedAt: number;
}

function backwardGradients(student: CausalLM, o: BackwardGradientOptions): OperatorFunction<LossBatch, GradientBatch> {
  const names = new Map<string, string>();
  for (const [name, v] of student.params) names.set(v.name, name);
  // The parameters' order, which a step's gradient map keeps (the global norm sums in it, as every layout does).
  const order = student.trainableVariables().map((v) => names.get(v.name) ?? v.name);
  return (source) =>
    defer(() => {
      // State per subscription: two subscriptions of one pipeline never share a step.
      let open: OpenStep | null = null;

      /** Emits the open step's gradients and completes once optimizerStep has taken the step. */
      const handOn = (): Observable<GradientBatch> => {
        const s = open;
        open = null;
        if (!s) return EMPTY;
        return new Observable<GradientBatch>((subscriber) => {
          finishStep(s, o.gradNorm === true)
            .then((g) => {
              subscriber.next({ ...g, stepTaken: () => subscriber.complete() });
            })
            .catch((e: unknown) => subscriber.error(e));
        });
      };

      const onBatch = (batch: LossBatch): Observable<GradientBatch> => {
        const { position } = batch;
        // A micro-batch of a later global batch: the open one lost its last micro-batches upstream and is complete.
        const before = open && open.position.step !== position.step ? handOn() : EMPTY;
        return concat(
          before,
          defer(() => {
            accumulate(batch);
            return position.micro === position.numMicro - 1 ? handOn() : EMPTY;
          }),
        );
      };

      const accumulate = (batch: LossBatch): void => {
        const { position } = batch;
        const s: OpenStep = (open ??= {
          position,
          grads: new Map(),
          scalars: [],
          hasKd: false,
          hasCe: false,
          micros: 0,
          tokens: 0,
          globalBatchTokens: batch.globalBatchTokens,
          startedAt: performance.now(),
        });
        let kd: tf.Scalar | undefined;
        let ce: tf.Scalar | undefined;
        const tape = () =>
          tf.variableGrads(() => {
            const parts = batch.loss();
            kd = parts.kd ? tf.keep(parts.kd) : undefined;
            ce = parts.ce ? tf.keep(parts.ce) : undefined;
            return parts.total;
          }, student.trainableVariables());
        // The step's last micro-batch may hand each gradient on as soon as it is final (the data-parallel reduction
        // starts during this pass); the hook then sums the earlier micro-batches in, and the loop below skips it.
        const last = position.micro === position.numMicro - 1;
        const hook = last && student.withGradientHooks ? (o.reductionDuringBackward?.hookFor() ?? null) : null;
        const hooked = new Set<string>();
        const { value, grads } = inStage('backward', position, () =>
          hook
            ? student.withGradientHooks!((name, dy) => {
                const prev = s.grads.get(name);
                const full = tf.keep(prev ? tf.add(prev, dy) : tf.clone(dy));
                prev?.dispose();
                s.grads.set(name, full);
                hooked.add(name);
                hook(name, full);
              }, tape)
            : tape(),
        );
        for (const [varName, g] of Object.entries(grads)) {
          const name = names.get(varName) ?? varName;
          if (hooked.has(name)) {
            g.dispose();
            continue;
          }
          const prev = s.grads.get(name);
          if (prev) {
            s.grads.set(name, tf.add(prev, g));
            prev.dispose();
            g.dispose();
          } else {
            s.grads.set(name, g);
          }
        }
        if (hooked.size) s.grads = new Map(order.filter((n) => s.grads.has(n)).map((n) => [n, s.grads.get(n)!]));
        // The step's scalars stay on the device until the step ends: one asynchronous readback per step, none per
        // micro-batch (webgpu in Node cannot read synchronously at all).
        const w = batch.tokens;
        s.scalars.push(value);
        if (kd) {
          s.scalars.push(tf.mul(kd as tf.Scalar, w));
          s.hasKd = true;
          (kd as tf.Scalar).dispose();
        }
        if (ce) {
          s.scalars.push(tf.mul(ce as tf.Scalar, w));
          s.hasCe = true;
          (ce as tf.Scalar).dispose();
        }
        s.micros++;
        s.tokens += w;
        disposeBatch(batch);
        o.credits?.release();
      };

      return concat(source.pipe(concatMap(onBatch)), defer(handOn)).pipe(
        // A stream torn down mid-global-batch (an error, a caller's take) leaves gradients for a step never taken.
        finalize(() => {
          if (open) disposeOpen(open);
          open = null;
        }),
      );
    });
}

/**
 * Reads the step's loss scalars back (one readback, with the gradient norm when `withNorm`) and, when micro-batches
 * were dropped, reweights to the tokens that came.
 */
async function finishStep(s: OpenStep, withNorm: boolean): Promise<Omit<GradientBatch, 'stepTaken'>> {
  // Each micro-batch's loss was weighted by its share of the whole global batch's tokens; when some never
  // arrived, the shares sum to less than one, so scale to the mean over the tokens that did arrive.
  const complete = s.micros === s.position.numMicro;
  const scale = complete || s.tokens === 0 ? 1 : s.globalBatchTokens / s.tokens;
  const normT = withNorm && scale === 1 ? globalNorm(s.grads.values()) : null;
  const stacked = tf.stack(normT ? [...s.scalars, normT] : s.scalars);
  for (const t of s.scalars) t.dispose();
  normT?.dispose();
  const read = await stacked.data();
  stacked.dispose();
  const values = normT ? read.subarray(0, read.length - 1) : read;
  // Per micro-batch: the loss, then kd and ce when present (the same for every micro-batch of one loss).
  const per = 1 + (s.hasKd ? 1 : 0) + (s.hasCe ? 1 : 0);
  let loss = 0;
  let kd = 0;
  let ce = 0;
  for (let i = 0; i < values.length; i += per) {
    loss += values[i];
    if (s.hasKd) kd += values[i + 1];
    if (s.hasCe) ce += values[i + per - 1];
  }
  if (scale !== 1) {
    loss *= scale;
    for (const [k, g] of s.grads) {
      s.grads.set(k, tf.mul(g, scale));
      g.dispose();
    }
  }
  return {
    step: s.position.step,
    grads: s.grads,
    sums: { loss, kd: s.hasKd ? kd : undefined, ce: s.hasCe ? ce : undefined, tokens: s.tokens },
    firstSample: s.position.firstSample,
    startedAt: s.startedAt,
    gradNorm: normT ? read[read.length - 1] : undefined,
  };
}

function disposeOpen(s: OpenStep): void {
  for (const g of s.grads.values()) g.dispose();
  for (const t of s.scalars) t.dispose();
}
