/**
 * Errors a user can act on: each says what was wrong, where (file, tensor, byte offset, flag) and what to do.
 * They are classes so that callers and tests can tell a bad input from a bug.
 */
export class DistillError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A file's bytes do not follow its format (safetensors, .idx/.bin, Arrow, config.json). */
export class FormatError extends DistillError {
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super(`${file}: ${detail}`);
  }
}

/** A flag or option has a value that cannot work; the message names the flag. */
export class ConfigError extends DistillError {}

/** A tensor's shape, dtype or presence disagrees with what the model config requires. */
export class CheckpointError extends DistillError {}

/** A backend was asked for and cannot be started here. */
export class BackendError extends DistillError {}

/**
 * An error raised inside a pipeline stage, labelled with the stage and the batch's position, so that a failure
 * hours into a run says where it happened ("teacherLogits, step 812, micro-batch 3 of 4, first sample 25984").
 */
export class StageError extends DistillError {
  constructor(
    readonly stage: string,
    readonly where: string,
    override readonly cause: unknown,
  ) {
    super(`${stage} failed at ${where}: ${cause instanceof Error ? cause.message : String(cause)}`);
    if (cause instanceof Error && cause.stack) this.stack = `${this.name}: ${this.message}\n  caused by ${cause.stack}`;
  }
}
