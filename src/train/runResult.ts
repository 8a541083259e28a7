/**
 * What a run returns, in every layout (one process, data-parallel workers, model-parallel ranks): kept in the
 * engine so that the launcher and the messages between workers name it without importing the pipelines.
 */
import type { BackendReport } from '../backend/select.ts';
import type { StepResult } from './batch.ts';

/** One validation: the student's next-token CE and its KD divergence to the teacher on held-out samples. */
export interface ValidationResult {
  step: number;
  /** Student cross-entropy on the next token. */
  studentCe: number;
  /** KD divergence to the teacher, without the τ² factor; absent when there is no teacher. */
  kdLoss?: number;
  tokens: number;
}

export interface RunResult {
  runDir: string;
  studentDir: string;
  /** The steps this invocation took. */
  steps: StepResult[];
  validations: ValidationResult[];
  resumedFromStep: number;
  backend: BackendReport;
  stoppedEarly: boolean;
  /**
   * The run had reached --max_steps before this invocation: nothing was trained, and `lastStep` is the
   * checkpoint's record of its last step (when the checkpoint holds one).
   */
  alreadyFinished?: boolean;
  /** The run's last step: this invocation's last, or a finished run's from its checkpoint. */
  lastStep?: StepResult;
}
