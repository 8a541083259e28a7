/**
 * Which gradients travel together: the parameters in reverse order (the order backward finishes them: last layer
 * first, embeddings last), packed greedily into buckets of at most `bucketBytes`. A parameter larger than a bucket
 * gets one of its own; none is ever split, so a bucket is one flat buffer of whole gradients. The plan depends only
 * on the names, sizes and order, which every data-parallel rank shares, so every rank makes the same buckets.
 */

/** One gradient's place in its bucket's flat buffer. */
export interface BucketEntry {
  name: string;
  /** Offset in elements within the bucket. */
  offset: number;
  size: number;
}

export interface GradientBucket {
  entries: BucketEntry[];
  /** Elements of gradients in the bucket (extras not counted). */
  elements: number;
}

/**
 * Buckets for parameters given in the model's order (forward: embeddings first). `bytesPerElement` is 4 (float32).
 */
export function planGradientBuckets(params: readonly { name: string; size: number }[], bucketBytes: number, bytesPerElement = 4): GradientBucket[] {
  if (!(bucketBytes > 0)) throw new RangeError(`planGradientBuckets: the bucket size must be positive, got ${bucketBytes} bytes`);
  const cap = Math.max(1, Math.floor(bucketBytes / bytesPerElement));
  const buckets: GradientBucket[] = [];
  let current: GradientBucket = { entries: [], elements: 0 };
  for (let i = params.length - 1; i >= 0; i--) {
    const { name, size } = params[i];
    if (current.entries.length && current.elements + size > cap) {
      buckets.push(current);
      current = { entries: [], elements: 0 };
    }
    current.entries.push({ name, offset: current.elements, size });
    current.elements += size;
  }
  // An empty model still makes one bucket: the extras (the agreed stop) ride in the last one.
  if (current.entries.length || !buckets.length) buckets.push(current);
  return buckets;
}
