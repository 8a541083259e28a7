/**
 * The in-flight credits of a data-parallel rank. A single worker stops by closing its credit pool; ranks cannot,
 * because each may have read a different number of micro-batches ahead, and a rank that finishes a step its
 * peers never read waits in the all-reduce forever. So closing only *requests* a stop; the request rides in the
 * next gradient all-reduce, and when any rank asked, all of them agree to read up to the same last step: the one
 * beyond which no rank can have read yet (the reduced step plus the in-flight window).
 */
import { Credits } from '../train/credits.ts';

export class DataParallelCredits extends Credits {
  private acquired = 0;
  private lastStep = Infinity;
  stopRequested = false;

  constructor(
    limit: number,
    private readonly startStep: number,
    private readonly microPerStep: number,
  ) {
    super(limit);
  }

  /** Steps the reader may have read beyond a step whose gradients are being reduced. */
  get lookahead(): number {
    return Math.ceil(this.limit / this.microPerStep);
  }

  override async acquire(): Promise<boolean> {
    // readBatches takes one credit per micro-batch, in order, so the count says which step it is reading for.
    const step = this.startStep + Math.floor(this.acquired++ / this.microPerStep);
    if (step > this.lastStep) return false;
    const ok = await super.acquire();
    if (ok && step > this.lastStep) {
      this.release();
      return false;
    }
    return ok;
  }

  /** run() calls this on Ctrl-C, an abort, and at the end: a request, agreed in the next all-reduce. */
  override close(): void {
    this.stopRequested = true;
  }

  /** All ranks agreed: read nothing for steps after `lastStep`. */
  stopAfter(lastStep: number): void {
    this.lastStep = Math.min(this.lastStep, lastStep);
  }
}
