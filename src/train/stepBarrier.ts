/**
 * Holds `backward` after each optimizer step until the stages after it (checkpoint, validation, logs) are done
 * with that step. Only `backward` changes the student's weights, so while it waits, a checkpoint or a validation
 * reads exactly the weights of the step it was given, even when they await in between. The stages before
 * `backward` (data, teacher) keep working ahead, within the in-flight limit.
 */
export class StepBarrier {
  private waiting = new Map<number, () => void>();
  private released = new Set<number>();

  /** Resolves once `release(step)` has been called (before or after). */
  wait(step: number): Promise<void> {
    if (this.released.delete(step)) return Promise.resolve();
    return new Promise((resolve) => this.waiting.set(step, resolve));
  }

  release(step: number): void {
    const w = this.waiting.get(step);
    if (w) {
      this.waiting.delete(step);
      w();
    } else {
      this.released.add(step);
    }
  }

  /** Lets every waiter go: the pipeline is ending. */
  releaseAll(): void {
    for (const w of this.waiting.values()) w();
    this.waiting.clear();
  }
}
