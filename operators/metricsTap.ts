/**
 * Hands every step result (and validation result) to the run's metric sinks: metrics.jsonl, TensorBoard, the
 * progress bar. A tap: step results pass through unchanged.
 */
import { tap, type OperatorFunction } from 'rxjs';
import type { StepResult } from '../src/train/batch.ts';

export interface MetricsSink {
  onStep(result: StepResult): void;
}

export function metricsTap(sinks: MetricsSink[]): OperatorFunction<StepResult, StepResult> {
  return tap((r) => {
    for (const s of sinks) s.onStep(r);
  });
}
