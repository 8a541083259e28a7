/**
 * Writes a training checkpoint every `saveInterval` steps and after the last step; passes every step result on.
 * When the pipeline is unsubscribed (Ctrl-C, a caller's `take`), it writes the last completed step that was not
 * saved yet, so stopping loses nothing; the write is registered in `pending` for the runner to await.
 */
import { concatMap, finalize, type OperatorFunction } from 'rxjs';
import type { StepResult } from '../src/train/batch.ts';
import { StageError } from '../src/errors.ts';

export interface CheckpointSinkOptions {
  saveInterval: number;
  /** Number of the last step of the run (0-based), always saved. */
  lastStep: number;
  save: (result: StepResult) => Promise<void>;
  /** Saves started by teardown land here; the runner awaits them before it exits. */
  pending?: Promise<void>[];
}

export function checkpointSink(o: CheckpointSinkOptions): OperatorFunction<StepResult, StepResult> {
  return (source) => {
    let lastDone: StepResult | null = null;
    let lastSaved = -1;
    let saving: Promise<void> = Promise.resolve();
    return source.pipe(
      concatMap(async (r) => {
        lastDone = r;
        if ((r.step + 1) % o.saveInterval === 0 || r.step === o.lastStep) {
          saving = o.save(r).catch((e: unknown) => {
            throw e instanceof StageError ? e : new StageError('checkpointSink', `step ${r.step + 1} (the previous checkpoint is intact)`, e);
          });
          await saving;
          lastSaved = r.step;
        }
        return r;
      }),
      finalize(() => {
        const r = lastDone;
        if (r && lastSaved !== r.step) {
          const p = saving.then(() => o.save(r));
          // The runner awaits `pending` only after a pipeline that succeeded; when a save failed (disk full) the
          // error already ended the pipeline, and this retry's rejection must not also escape as an unhandled
          // rejection, which kills a library caller's process even though it caught run()'s error.
          p.catch(() => {});
          o.pending?.push(p);
        }
      }),
    );
  };
}
