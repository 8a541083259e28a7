/**
 * Sums gradients over a communicator's ranks bucket by bucket (gradientBucketPlan.ts): each bucket's gradients
 * are laid end to end in one flat tensor on the backend (on cuda: device memory, no copy to the host), all-reduced,
 * and cut back into the gradients' shapes. The map keeps its keys and their order (the global norm that follows
 * sums them in that order, as a single worker does), so the arithmetic is today's: the sum, then the global norm.
 *
 * `extra` numbers (control flags that must be agreed on, e.g. a requested stop) ride at the end of the last bucket;
 * their sums are returned, read once every bucket is done. A failure of any rank, or a collective that does not
 * finish within the timeout, rejects with the communicator's CollectiveError (naming the rank where it knows it)
 * after aborting this rank's communicator, so that no later collective waits on a dead group.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Communicator } from './communicator.ts';
import type { GradientBucket } from './gradientBucketPlan.ts';

export async function allReduceGradientBuckets(
  grads: Map<string, tf.Tensor>,
  comm: Communicator,
  buckets: readonly GradientBucket[],
  extra: readonly number[] = [],
  timeoutMs?: number,
): Promise<number[]> {
  let extras: tf.Tensor | null = null;
  try {
    for (let b = 0; b < buckets.length; b++) {
      const bucket = buckets[b];
      const last = b === buckets.length - 1;
      const flat = tf.tidy(() => {
        const parts = bucket.entries.map((e) => {
          const g = grads.get(e.name);
          if (!g) throw new RangeError(`bucket ${b} names gradient ${e.name}, which this step did not produce: the plan is stale`);
          if (g.size !== e.size) throw new RangeError(`bucket ${b}: gradient ${e.name} has ${g.size} elements, the plan ${e.size}: the plan is stale`);
          return tf.reshape(g, [-1]);
        });
        if (last && extra.length) parts.push(tf.tensor1d(Float32Array.from(extra), 'float32'));
        return parts.length === 1 ? tf.clone(parts[0]) : tf.concat(parts);
      });
      let reduced: tf.Tensor;
      try {
        reduced = await comm.allReduceSum(flat);
      } finally {
        flat.dispose();
      }
      for (const e of bucket.entries) {
        const old = grads.get(e.name)!;
        grads.set(
          e.name,
          tf.tidy(() => tf.reshape(tf.slice(reduced, [e.offset], [e.size]), old.shape)),
        );
        old.dispose();
      }
      if (last && extra.length) extras = tf.slice(reduced, [bucket.elements], [extra.length]);
      reduced.dispose();
    }
    await comm.synchronize(timeoutMs);
  } catch (e) {
    extras?.dispose();
    comm.abort(e instanceof Error ? e : new Error(String(e)));
    throw e;
  }
  if (!extras) return [];
  const sums = Array.from(await extras.data());
  extras.dispose();
  return sums;
}
