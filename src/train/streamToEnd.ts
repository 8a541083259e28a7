/**
 * Runs a training stream to its end, or to a stop (Ctrl-C, an abort signal): stopping closes the source's credits,
 * the micro-batches in flight drain through the stages, the stream completes, and checkpointSink writes the last
 * completed step, so weights and checkpoint always agree. The end of the stream releases each step's barrier,
 * which lets the optimizer step go on to the next step (see StepBarrier).
 */
import { tap, type Observable } from 'rxjs';
import type { StepResult } from './batch.ts';
import type { Credits } from './credits.ts';
import type { StepBarrier } from './stepBarrier.ts';

export interface StreamToEndOptions {
  credits: Credits;
  barrier: StepBarrier;
  signal?: AbortSignal;
  log: (line: string) => void;
}

/** Resolves with whether the run was stopped before its last step; rejects with the stream's error. */
export async function streamToEnd(steps: Observable<StepResult>, o: StreamToEndOptions): Promise<{ stoppedEarly: boolean }> {
  let stoppedEarly = false;
  await new Promise<void>((resolve, reject) => {
    const onStop = (): void => {
      if (stoppedEarly) return;
      stoppedEarly = true;
      o.log('stopping: finishing the batches in flight, then writing a checkpoint');
      o.credits.close();
    };
    const sub = steps.pipe(tap((r) => o.barrier.release(r.step))).subscribe({ error: reject, complete: resolve });
    o.signal?.addEventListener('abort', onStop, { once: true });
    process.once('SIGINT', onStop);
    sub.add(() => process.off('SIGINT', onStop));
  }).finally(() => {
    o.credits.close();
    o.barrier.releaseAll();
  });
  return { stoppedEarly };
}
