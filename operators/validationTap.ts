/**
 * Runs validation every `interval` steps (and after the last step) and reports it; step results pass through.
 * Validation runs between optimizer steps, on the same weights the step just produced.
 */
import { concatMap, type OperatorFunction } from 'rxjs';
import type { StepResult } from '../src/train/batch.ts';
import type { ValidationResult } from '../src/train/runResult.ts';

export type { ValidationResult };

export interface ValidationTapOptions {
  interval: number;
  lastStep: number;
  validate: (step: number) => Promise<ValidationResult>;
  onValidation: (v: ValidationResult) => void;
}

export function validationTap(o: ValidationTapOptions): OperatorFunction<StepResult, StepResult> {
  return concatMap(async (r) => {
    if (o.interval > 0 && ((r.step + 1) % o.interval === 0 || r.step === o.lastStep)) {
      o.onValidation(await o.validate(r.step));
    }
    return r;
  });
}
