/**
 * Megatron's vocabulary padding for tensor parallelism. A vocabulary-parallel embedding or head splits its rows
 * evenly over the TP ranks, which an odd vocabulary (GPT-2's 50,257) cannot do; Megatron pads the rows to a multiple
 * of `make_vocab_size_divisible_by × tp` (128 × tp by default, NeMo's flag), so every rank holds the same number of
 * rows and the split is one arithmetic rule (rank r holds [r·P/tp, (r+1)·P/tp)), never two (torch's `chunk` and
 * `tensor_split` cut 999 rows differently). The padded ids are not tokens: their rows are zero, the loss masks them
 * out of every softmax, max and sum, so their gradients are zero and AdamW never moves them, and checkpoints drop
 * them, so the saved model keeps its own vocabulary.
 *
 * A teacher and a student must be cut the same way for the vocabulary-parallel loss to pair their slices, so both
 * pad to the one size of the pair (pairedVocabSize), whose padded ids each side masks beyond its own vocabulary.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../../errors.ts';

/** NeMo's default for `make_vocab_size_divisible_by`. */
export const DEFAULT_MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128;

/**
 * The vocabulary rows, padded, of a model whose own vocabulary is `vocabSize`: the next multiple of divisor × tp, as
 * Megatron's `_vocab_size_with_padding`. With one TP rank nothing is split, so nothing is padded.
 */
export function paddedVocabSize(vocabSize: number, tp: number, makeVocabSizeDivisibleBy = DEFAULT_MAKE_VOCAB_SIZE_DIVISIBLE_BY): number {
  if (!Number.isInteger(makeVocabSizeDivisibleBy) || makeVocabSizeDivisibleBy < 1) {
    throw new ConfigError(`--make_vocab_size_divisible_by ${makeVocabSizeDivisibleBy} must be a positive integer`);
  }
  if (tp === 1) return vocabSize;
  const multiple = makeVocabSizeDivisibleBy * tp;
  return Math.ceil(vocabSize / multiple) * multiple;
}

/**
 * The rows that models of these vocabularies (a student and its teacher) all pad to under `tp`, so that each TP rank
 * holds the same ids of both: the largest of their padded sizes (itself a multiple of divisor × tp).
 */
export function pairedVocabSize(vocabSizes: readonly number[], tp: number, makeVocabSizeDivisibleBy = DEFAULT_MAKE_VOCAB_SIZE_DIVISIBLE_BY): number {
  return Math.max(...vocabSizes.map((v) => paddedVocabSize(v, tp, makeVocabSizeDivisibleBy)));
}

/** One TP rank's rows of a padded vocabulary-parallel tensor (an embedding or a head). */
export interface VocabShard {
  /** The model's own vocabulary (config.json's vocab_size): ids at or past it are padding. */
  vocabSize: number;
  /** All rows over the TP group, padding included (a multiple of tp). */
  paddedSize: number;
  /** This rank's first id. */
  first: number;
  /** Rows this rank holds: paddedSize / tp. */
  rows: number;
  /** How many of them, from the first, are the model's own ids (the rest is padding): 0 to rows. */
  valid: number;
}

export function vocabShard(vocabSize: number, paddedSize: number, tp: number, tpRank: number): VocabShard {
  if (paddedSize < vocabSize || paddedSize % tp !== 0) {
    throw new ConfigError(
      `a vocabulary of ${vocabSize} cannot be padded to ${paddedSize} rows over --tp_size ${tp}: the padded size must be at least the vocabulary and a multiple of ${tp}`,
    );
  }
  const rows = paddedSize / tp;
  const first = tpRank * rows;
  return { vocabSize, paddedSize, first, rows, valid: Math.max(0, Math.min(rows, vocabSize - first)) };
}

/**
 * The rank's rows [first, first + rows) of a [vocabSize, cols] row-major tensor, the rows past vocabSize zero: its
 * slice of the padded tensor, without building the padded tensor.
 */
export function sliceVocabRows(full: Float32Array, cols: number, s: VocabShard): Float32Array {
  if (full.length !== s.vocabSize * cols) throw new RangeError(`vocabulary rows: ${full.length} values are not ${s.vocabSize} rows of ${cols}`);
  const out = new Float32Array(s.rows * cols);
  out.set(full.subarray(s.first * cols, (s.first + s.valid) * cols));
  return out;
}

/** The model's own rows [0, vocabSize) of a padded [paddedSize, cols] tensor: what a checkpoint keeps. */
export function dropPaddingRows(padded: Float32Array, cols: number, vocabSize: number): Float32Array {
  return padded.slice(0, vocabSize * cols);
}

/**
 * Which vocabulary shard a loaded embedding or head slice is, recorded by loadShardedModel for the tensor itself,
 * so the stage and the loss that receive the variable know its padding without another channel to carry it.
 */
const shards = new WeakMap<tf.Tensor, VocabShard>();

export function recordVocabShard(t: tf.Tensor, s: VocabShard): void {
  shards.set(t, s);
}

export function vocabShardOf(t: tf.Tensor): VocabShard | undefined {
  return shards.get(t);
}
