/**
 * Training samples of seq_length + 1 tokens (inputs and the labels shifted by one), cut as Megatron's GPTDataset cuts
 * them: each epoch concatenates the documents of a range in a shuffled order, and consecutive windows of
 * seq_length + 1 tokens overlap by one token (the last label of a sample is the first input of the next), so every
 * token is predicted once per epoch. The windows of an epoch are then visited in a shuffled order.
 *
 * Differences from Megatron, on purpose: every epoch is self-contained (its leftover tail, fewer than seq_length
 * tokens, is dropped rather than carried into the next epoch), which makes sample(i) a pure function of (seed, i):
 * random access by global index, so training resumes at any data position without replaying the stream.
 */
import { ConfigError, FormatError } from '../errors.ts';
import type { TokenDataset } from './dataset.ts';
import { mixSeed, permutation } from './prng.ts';

export interface GptSamplesOptions {
  seqLength: number;
  seed: number;
  /** Document range [start, end) of the dataset (a split). */
  range: [number, number];
  /** When given, every token read is checked to be below it. */
  vocabSize?: number;
  /** Shuffle documents and windows within each epoch (default true). */
  shuffle?: boolean;
}

interface Epoch {
  index: number;
  /** Documents (absolute indices) in this epoch's order. */
  order: Int32Array;
  /** starts[k] = tokens before order[k]; starts[n] = total. */
  starts: Float64Array;
  /** Window visiting order. */
  windows: Int32Array;
}

export class GptSamples {
  readonly seqLength: number;
  /** Samples in one epoch; sample(i) accepts any i >= 0 and repeats epochs with fresh shuffles. */
  readonly samplesPerEpoch: number;
  readonly numDocuments: number;
  readonly numTokens: number;
  private epoch: Epoch | null = null;
  private readonly docCache = new Map<number, Int32Array>();

  constructor(readonly dataset: TokenDataset, private readonly opts: GptSamplesOptions) {
    if (!Number.isInteger(opts.seqLength) || opts.seqLength < 1) throw new ConfigError(`--seq_length ${opts.seqLength}: must be a positive integer`);
    const [start, end] = opts.range;
    if (start < 0 || end > dataset.numDocuments || start > end) {
      throw new RangeError(`${dataset.path}: document range [${start}, ${end}) outside [0, ${dataset.numDocuments})`);
    }
    this.seqLength = opts.seqLength;
    this.numDocuments = end - start;
    let tokens = 0;
    for (let d = start; d < end; d++) tokens += dataset.documentLength(d);
    this.numTokens = tokens;
    this.samplesPerEpoch = tokens > opts.seqLength ? Math.floor((tokens - 1) / opts.seqLength) : 0;
  }

  /** Sample i (global index over repeated epochs): seqLength + 1 token ids. */
  sample(i: number): Int32Array {
    if (!Number.isInteger(i) || i < 0) throw new RangeError(`sample index ${i} must be a non-negative integer`);
    if (this.samplesPerEpoch === 0) {
      throw new ConfigError(`${this.dataset.path}: ${this.numTokens} tokens in ${this.numDocuments} documents of this split, fewer than --seq_length + 1 = ${this.seqLength + 1}: no sample can be cut. Use more data, a larger split share, or a shorter --seq_length.`);
    }
    const e = this.epochOf(Math.floor(i / this.samplesPerEpoch));
    const w = e.windows[i % this.samplesPerEpoch];
    const out = new Int32Array(this.seqLength + 1);
    let pos = w * this.seqLength; // token offset in this epoch's concatenation
    let k = upperBound(e.starts, pos) - 1; // the document holding token pos
    let filled = 0;
    while (filled < out.length) {
      const doc = this.document(e.order[k]);
      const off = pos - e.starts[k];
      const n = Math.min(doc.length - off, out.length - filled);
      out.set(doc.subarray(off, off + n), filled);
      filled += n;
      pos += n;
      k++;
    }
    return out;
  }

  private epochOf(index: number): Epoch {
    if (this.epoch?.index === index) return this.epoch;
    const [start] = this.opts.range;
    const shuffle = this.opts.shuffle ?? true;
    const perm = shuffle ? permutation(this.numDocuments, mixSeed(this.opts.seed, index, 1)) : identity(this.numDocuments);
    const order = new Int32Array(this.numDocuments);
    const starts = new Float64Array(this.numDocuments + 1);
    for (let k = 0; k < this.numDocuments; k++) {
      order[k] = start + perm[k];
      starts[k + 1] = starts[k] + this.dataset.documentLength(order[k]);
    }
    const windows = shuffle ? permutation(this.samplesPerEpoch, mixSeed(this.opts.seed, index, 2)) : identity(this.samplesPerEpoch);
    this.epoch = { index, order, starts, windows };
    return this.epoch;
  }

  private document(d: number): Int32Array {
    const hit = this.docCache.get(d);
    if (hit) return hit;
    const doc = this.dataset.document(d);
    const vocab = this.opts.vocabSize;
    if (vocab !== undefined) {
      for (let t = 0; t < doc.length; t++) {
        if (doc[t] < 0 || doc[t] >= vocab) {
          throw new FormatError(this.dataset.fileOf(d), `document ${d}, token ${t}: id ${doc[t]} is outside the model's vocabulary [0, ${vocab}). The data was tokenized for a larger vocabulary: use the matching tokenizer/model or re-run prepare.`);
        }
      }
    }
    // Consecutive windows share documents; a few cached documents avoid re-reading them.
    this.docCache.set(d, doc);
    if (this.docCache.size > 8) this.docCache.delete(this.docCache.keys().next().value as number);
    return doc;
  }
}

function identity(n: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  return p;
}

/** First index k with a[k] > x. */
function upperBound(a: Float64Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
