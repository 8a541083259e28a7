/**
 * Backpressure for a push-based RxJS chain: the source takes a credit before it emits a micro-batch and the last
 * stage gives it back when the micro-batch is done. So a slow stage slows the source instead of letting batches
 * (and their tensors) pile up in an operator's queue; the number of credits is the in-flight limit.
 */
export class Credits {
  private available: number;
  private waiters: (() => void)[] = [];
  private closed = false;
  /** The most credits ever held at once: what a test of bounded in-flight batches reads. */
  maxInFlight = 0;

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`in-flight limit must be a positive integer, got ${limit}`);
    this.available = limit;
  }

  get inFlight(): number {
    return this.limit - this.available;
  }

  /** Resolves when a credit is free; resolves at once (without a credit) after close(), so the source can end. */
  acquire(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (this.available > 0) {
      this.available--;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      this.waiters.push(() => {
        if (this.closed) return resolve(false);
        this.available--;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        resolve(true);
      });
    });
  }

  release(n = 1): void {
    this.available = Math.min(this.limit, this.available + n);
    while (this.available > 0 && this.waiters.length > 0) this.waiters.shift()!();
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w();
  }
}
