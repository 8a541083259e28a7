/**
 * Labels errors with the stage that raised them and the batch's position (internal to the operators). An error
 * already labelled by an earlier stage passes through unchanged, so the message names where it began.
 */
import { StageError } from '../src/errors.ts';
import type { BatchPosition } from '../src/train/batch.ts';

export function describePosition(p: BatchPosition): string {
  // Steps count from 1 in every message, as on the console, in metrics.jsonl and in checkpoint names.
  return `step ${p.step + 1}, micro-batch ${p.micro + 1} of ${p.numMicro}, first sample ${p.firstSample}`;
}

/** Runs `f`, rethrowing any error as a StageError of `stage` at `position`. */
export function inStage<T>(stage: string, position: BatchPosition, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw e instanceof StageError ? e : new StageError(stage, describePosition(position), e);
  }
}
