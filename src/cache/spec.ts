/**
 * What a teacher cache keeps per token position (the method and its parameters), and the rows it keeps, in one
 * shape for all methods: row r (one token position) is entries [offsets[r], offsets[r + 1]) of ids / logProbs /
 * counts. The encoders, the Arrow columns and the loss targets are all built from this one form.
 */
import { ConfigError } from '../errors.ts';
import { VALUE_DTYPES, type ValueDtype } from './quantize.ts';

export type CacheMethod = 'topk' | 'sample' | 'full';
export const CACHE_METHODS: readonly CacheMethod[] = ['topk', 'sample', 'full'];

export interface CacheSpec {
  method: CacheMethod;
  /** topk: K, the ids kept per position. */
  topK: number;
  /** sample: N, the draws per position. */
  samples: number;
  /** sample: the seed of the draws (mixed with sample index and position). */
  sampleSeed: number;
  valueDtype: ValueDtype;
  /** τ of the teacher's softmax whose log-probabilities are stored. */
  temperature: number;
}

export interface CacheRows {
  /** Token positions. */
  rows: number;
  /** [rows + 1] entry offsets: fixed K (topk) or V (full) per row, variable for sample. */
  offsets: Int32Array;
  /** Token ids per entry; absent for full (entry j of a row is id j). */
  ids?: Int32Array;
  /** Teacher log-probabilities at τ per entry (for sample: of the drawn ids). */
  logProbs: Float32Array;
  /** sample: how many of the N draws gave each id. */
  counts?: Int32Array;
  /** topk: the teacher's mass outside its top K, 1 − Σ p_t,k, per row (float64 sum of the float32 log-probs). */
  ghost?: Float32Array;
}

export function validateSpec(s: CacheSpec, vocabSize: number): void {
  if (!CACHE_METHODS.includes(s.method)) throw new ConfigError(`--method ${s.method}: use one of ${CACHE_METHODS.join(', ')}`);
  if (!VALUE_DTYPES.includes(s.valueDtype)) throw new ConfigError(`--value_dtype ${s.valueDtype}: use one of ${VALUE_DTYPES.join(', ')}`);
  if (!(s.temperature > 0)) throw new ConfigError(`--temperature must be positive, got ${s.temperature}`);
  if (s.method === 'topk' && !(Number.isInteger(s.topK) && s.topK >= 1 && s.topK <= vocabSize)) {
    throw new ConfigError(`--top_k ${s.topK} must be an integer in [1, vocab size ${vocabSize}]`);
  }
  if (s.method === 'sample' && !(Number.isInteger(s.samples) && s.samples >= 1 && s.samples <= 65535)) {
    throw new ConfigError(`--samples ${s.samples} must be an integer in [1, 65535]`);
  }
}

/** Entries per row for the fixed-width methods; null for sample. */
export function fixedWidth(s: CacheSpec, vocabSize: number): number | null {
  return s.method === 'topk' ? s.topK : s.method === 'full' ? vocabSize : null;
}
