/**
 * `backward` for one rank of a tensor/pipeline/context-parallel layout: the micro-batches of each global batch
 * (this rank's data-parallel slice) run through the rank's pipeline stage in 1F1B order, the teacher's matching
 * part included (ModelParallelTrainer), and the rank's gradients go on to `optimizerStep`, which reduces them over
 * the layout (`trainer.reduction`). Like `backward`, it waits until the step is taken before the next global batch.
 *
 * A pipeline schedule needs the whole global batch, so a global batch missing micro-batches (a stop that ended the
 * source mid-batch) is not a step here: its micro-batches are dropped, as are all after `o.stopped()` turns true.
 */
import { concat, concatMap, defer, EMPTY, finalize, Observable, type OperatorFunction } from 'rxjs';
import { disposeBatch, type GradientBatch, type TokenBatch } from '../src/train/batch.ts';
import type { Credits } from '../src/train/credits.ts';
import type { ModelParallelTrainer } from '../src/parallel/modelParallel/modelParallelTrainer.ts';

export interface ModelParallelBackwardOptions {
  /** The source's credits: given back once a global batch's gradients are computed. */
  credits?: Credits;
  /** True once the ranks agreed to stop: what is still in flight is dropped on every rank alike. */
  stopped?: () => boolean;
}

export function modelParallelBackward(trainer: ModelParallelTrainer, o: ModelParallelBackwardOptions = {}): OperatorFunction<TokenBatch, GradientBatch> {
  return (source) =>
    defer(() => {
      let open: TokenBatch[] = [];

      const drop = (batches: TokenBatch[]): Observable<GradientBatch> => {
        for (const b of batches) disposeBatch(b);
        o.credits?.release(batches.length);
        return EMPTY;
      };

      const takeStep = (micros: TokenBatch[]): Observable<GradientBatch> => {
        if (o.stopped?.() || micros.length < micros[0].position.numMicro) return drop(micros);
        return new Observable<GradientBatch>((subscriber) => {
          trainer
            .gradients(micros)
            .then((g) => {
              drop(micros);
              subscriber.next({ ...g, stepTaken: () => subscriber.complete() });
            })
            .catch((e: unknown) => {
              drop(micros);
              subscriber.error(e);
            });
        });
      };

      const onBatch = (batch: TokenBatch): Observable<GradientBatch> => {
        const { step, micro, numMicro } = batch.position;
        const before = open.length && open[0].position.step !== step ? takeStep(open.splice(0)) : EMPTY;
        open.push(batch);
        return concat(
          before,
          defer(() => (micro === numMicro - 1 ? takeStep(open.splice(0)) : EMPTY)),
        );
      };

      return concat(
        source.pipe(concatMap(onBatch)),
        defer(() => (open.length ? takeStep(open.splice(0)) : EMPTY)),
      ).pipe(
        finalize(() => {
          for (const b of open) disposeBatch(b);
          open = [];
        }),
      );
    });
}
