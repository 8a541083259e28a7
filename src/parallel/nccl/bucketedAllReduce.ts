/**
 * Sums gradients over a communicator's ranks bucket by bucket (gradientBucketPlan.ts): each bucket's gradients
 * are laid end to end in one flat tensor on the backend (on cuda: device memory, no copy to the host), all-reduced,
 * and cut back into the gradients' shapes. The map keeps its keys and their order (the global norm that follows
 * sums them in that order, as a single worker does), so the arithmetic is today's: the sum, then the global norm.
 *
 * A bucket starts as soon as its last gradient is final (`ready`, called by a gradient hook while the backward
 * pass still runs: PyTorch DDP's and Megatron's overlap of the gradient reduction with the backward) or at `finish`
 * for those whose gradients came when the tape was done. Buckets start in the plan's order whatever order their
 * gradients come in, so every rank issues the same collectives in the same order.
 *
 * `extra` numbers (control flags that must be agreed on, e.g. a requested stop) ride at the end of the last bucket,
 * read when it starts; their sums are returned by `finish`, read once every bucket is done. A failure of any rank,
 * or a collective that does not finish within the timeout, rejects with the communicator's CollectiveError (naming
 * the rank where it knows it) after aborting this rank's communicator, so that no later collective waits on a dead
 * group.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Communicator, PendingCollective } from './communicator.ts';
import type { GradientBucket } from './gradientBucketPlan.ts';

interface StartedBucket {
  flat: tf.Tensor;
  sum: PendingCollective;
}

export class BucketedGradientReduction {
  /** Final gradients of buckets not started yet, by name (read, not owned: the caller keeps them alive). */
  private readonly waiting = new Map<string, tf.Tensor>();
  private readonly started: StartedBucket[] = [];
  private failed = false;

  constructor(
    private readonly comm: Communicator,
    private readonly buckets: readonly GradientBucket[],
    private readonly extra: () => readonly number[] = () => [],
  ) {}

  /** `grad` is `name`'s final gradient for the step: starts its bucket, and any after it, once whole and in turn. */
  ready(name: string, grad: tf.Tensor): void {
    this.waiting.set(name, grad);
    try {
      while (this.started.length < this.buckets.length && this.buckets[this.started.length].entries.every((e) => this.waiting.has(e.name))) this.startNext();
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * Starts the buckets not started yet from `grads` (the step's final gradients), waits for every sum, and puts
   * the sums in `grads` in place of the gradients (disposing those). Returns the sums of the extras.
   */
  async finish(grads: Map<string, tf.Tensor>, timeoutMs?: number): Promise<number[]> {
    let extras: tf.Tensor | null = null;
    try {
      while (this.started.length < this.buckets.length) {
        for (const e of this.buckets[this.started.length].entries)
          if (!this.waiting.has(e.name) && grads.has(e.name)) this.waiting.set(e.name, grads.get(e.name)!);
        this.startNext();
      }
      for (let b = 0; b < this.buckets.length; b++) {
        const { flat, sum } = this.started[b];
        const bucket = this.buckets[b];
        const reduced = await sum.result();
        flat.dispose();
        for (const e of bucket.entries) {
          const old = grads.get(e.name)!;
          grads.set(
            e.name,
            tf.tidy(() => tf.reshape(tf.slice(reduced, [e.offset], [e.size]), old.shape)),
          );
          old.dispose();
        }
        if (b === this.buckets.length - 1 && reduced.size > bucket.elements) extras = tf.slice(reduced, [bucket.elements], [reduced.size - bucket.elements]);
        reduced.dispose();
      }
      await this.comm.synchronize(timeoutMs);
    } catch (e) {
      extras?.dispose();
      this.fail(e);
    }
    if (!extras) return [];
    const sums = Array.from(await extras.data());
    extras.dispose();
    return sums;
  }

  /** Lays the next bucket's gradients (and, for the last, the extras) end to end and starts their sum. */
  private startNext(): void {
    const b = this.started.length;
    const bucket = this.buckets[b];
    const extra = b === this.buckets.length - 1 ? this.extra() : [];
    // Kept: a bucket may start inside the backward pass's tidy and is read after it.
    const flat = tf.keep(
      tf.tidy(() => {
        const parts = bucket.entries.map((e) => {
          const g = this.waiting.get(e.name);
          if (!g) throw new RangeError(`bucket ${b} names gradient ${e.name}, which this step did not produce: the plan is stale`);
          if (g.size !== e.size) throw new RangeError(`bucket ${b}: gradient ${e.name} has ${g.size} elements, the plan ${e.size}: the plan is stale`);
          return tf.reshape(g, [-1]);
        });
        if (extra.length) parts.push(tf.tensor1d(Float32Array.from(extra), 'float32'));
        return parts.length === 1 ? tf.clone(parts[0]) : tf.concat(parts);
      }),
    );
    for (const e of bucket.entries) this.waiting.delete(e.name);
    try {
      this.started.push({ flat, sum: this.comm.startAllReduceSum(flat) });
    } catch (e) {
      flat.dispose();
      throw e;
    }
  }

  /** Aborts the communicator (no rank waits on this one any longer), frees what was started, and rethrows. */
  private fail(e: unknown): never {
    if (!this.failed) {
      this.failed = true;
      this.comm.abort(e instanceof Error ? e : new Error(String(e)));
      for (const s of this.started) s.flat.dispose();
    }
    throw e;
  }
}

/** All buckets after the backward pass: the gradients of `grads` summed over the ranks, in place; the extras' sums returned. */
export function allReduceGradientBuckets(
  grads: Map<string, tf.Tensor>,
  comm: Communicator,
  buckets: readonly GradientBucket[],
  extra: readonly number[] = [],
  timeoutMs?: number,
): Promise<number[]> {
  return new BucketedGradientReduction(comm, buckets, () => extra).finish(grads, timeoutMs);
}
