/**
 * Measures the peak tensor memory of one chunked KD forward + backward at a given size, for the memory test and
 * benchmarks: the point of the chunking is that this stays O(chunk × V) instead of the O(tokens × V) of
 * materialised logits (2048 × 151,936 × 4 B = 1.2 GB, several times over under autodiff).
 */
import * as tf from '@tensorflow/tfjs-core';
import { kdLossFromHidden } from './chunkedKd.ts';
import { setKeptLogitsBudget } from './chunkCache.ts';
import { DEFAULT_KD_LOSS, type KdLossOptions } from './types.ts';

export interface ChunkedKdProfileArgs {
  vocab: number;
  tokens: number;
  hidden: number;
  chunkSize: number;
  /** Budget for logits kept from the forward (chunkCache.ts); 0, the default here, measures the recompute path. */
  keepLogitsBytes?: number;
  options?: KdLossOptions;
}

export interface ChunkedKdProfile {
  /** tf.profile's peak of tf.memory().numBytes over the run, parameters and inputs included. */
  peakBytes: number;
  /** The bytes of everything allocated before the run: hidden states, heads, labels, mask. */
  inputBytes: number;
  /** One [chunk, V] float32 tensor. */
  chunkBytes: number;
  /** The [tokens, V] float32 logits that the chunking avoids. */
  fullLogitsBytes: number;
  /** Wall time of the forward + backward. */
  ms: number;
  loss: number;
}

/**
 * One chunked forward + backward (d/d hidden and d/d head) on random inputs, profiled, in the memory-bounded mode:
 * logits recomputed in the backward, as every loss whose [tokens, V] logits exceed chunkCache.ts's budget runs
 * (`keepLogitsBytes` sets another budget). Reads back asynchronously, so it also runs on webgpu.
 */
export async function profileChunkedKd(args: ChunkedKdProfileArgs): Promise<ChunkedKdProfile> {
  const { vocab, tokens, hidden, chunkSize } = args;
  const options = args.options ?? { ...DEFAULT_KD_LOSS, kdRatio: 0.5 };
  // The heads are variables, as in a model: the loss does not save (copy) variables for the backward pass.
  const inputs = tf.tidy(() => ({
    h: tf.randomNormal([tokens, hidden], 0, 1, 'float32', 1) as tf.Tensor2D,
    w: tf.variable(tf.randomNormal([vocab, hidden], 0, 0.1, 'float32', 2)) as tf.Variable<tf.Rank.R2>,
    th: tf.randomNormal([tokens, hidden], 0, 1, 'float32', 3) as tf.Tensor2D,
    tw: tf.variable(tf.randomNormal([vocab, hidden], 0, 0.1, 'float32', 4), false) as tf.Variable<tf.Rank.R2>,
    labels: tf.randomUniform([tokens], 0, vocab, 'int32', 5) as tf.Tensor1D,
    mask: tf.ones([tokens]) as tf.Tensor1D,
  }));
  const inputBytes = tf.memory().numBytes;
  let loss = NaN;
  const start = performance.now();
  const previous = setKeptLogitsBudget(args.keepLogitsBytes ?? 0);
  let info: Awaited<ReturnType<typeof tf.profile>>;
  try {
    info = await tf.profile(async () => {
      const { value, grads } = tf.valueAndGrads(
        (h: tf.Tensor, w: tf.Tensor) =>
          kdLossFromHidden({
            studentHidden: h as tf.Tensor2D,
            studentHead: w as tf.Tensor2D,
            teacherHidden: inputs.th,
            teacherHead: inputs.tw,
            labels: inputs.labels,
            mask: inputs.mask,
            options,
            chunkSize,
          }).loss,
      )([inputs.h, inputs.w]);
      loss = (await value.data())[0];
      await grads[1].data();
      tf.dispose([value, ...grads]);
    });
  } finally {
    setKeptLogitsBudget(previous);
  }
  const ms = performance.now() - start;
  tf.dispose(Object.values(inputs));
  return { peakBytes: info.peakBytes, inputBytes, chunkBytes: chunkSize * vocab * 4, fullLogitsBytes: tokens * vocab * 4, ms, loss };
}
