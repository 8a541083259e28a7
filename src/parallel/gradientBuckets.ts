/**
 * Sums gradients over the data-parallel ranks: reads them back, lays them end to end (sorted by name, so every
 * rank has the same layout), and all-reduces that flat array in buckets of a few MB, so that no single frame
 * holds the whole model and memory on the wire stays bounded. The summed values replace the map's tensors.
 */
import * as tf from '@tensorflow/tfjs-core';

export const DEFAULT_BUCKET_BYTES = 4 << 20;

export type ReduceBucket = (bucket: Float32Array, index: number) => Promise<void>;

/**
 * `extra` values ride along in the last bucket (control flags that must be agreed on); their sums are returned.
 */
export async function allReduceGradients(
  grads: Map<string, tf.Tensor>,
  reduce: ReduceBucket,
  bucketBytes = DEFAULT_BUCKET_BYTES,
  extra: readonly number[] = [],
): Promise<number[]> {
  const names = [...grads.keys()].sort();
  const sizes = names.map((n) => grads.get(n)!.size);
  const total = sizes.reduce((a, b) => a + b, 0);
  const flat = new Float32Array(total + extra.length);
  const values = await Promise.all(names.map((n) => grads.get(n)!.data<'float32'>()));
  let off = 0;
  for (const v of values) {
    flat.set(v, off);
    off += v.length;
  }
  flat.set(extra, total);
  const per = Math.max(1, Math.floor(bucketBytes / 4));
  for (let b = 0, start = 0; start < flat.length; b++, start += per) {
    await reduce(flat.subarray(start, Math.min(flat.length, start + per)), b);
  }
  off = 0;
  names.forEach((name, i) => {
    const old = grads.get(name)!;
    grads.set(name, tf.tensor(flat.slice(off, off + sizes[i]), old.shape, 'float32'));
    old.dispose();
    off += sizes[i];
  });
  return Array.from(flat.subarray(total));
}
