/**
 * The training data as random access by global sample index: `--data_paths` (one dataset or a weighted blend),
 * `--split`, `--seq_length` and `--seed` in, `sample(i)` out. Training asks for sample (step * batch + k), so a run
 * resumed at step s reads exactly the samples it would have read, with no state beyond the flags.
 */
import { ConfigError, FormatError } from '../errors.ts';
import { BlendIndex, parseDataPaths } from './blend.ts';
import { openTokenDataset, type TokenDataset } from './dataset.ts';
import { GptSamples } from './samples.ts';
import { parseSplit, splitRanges, type SplitName } from './split.ts';

export interface SampleSourceOptions {
  /** "W1 PREFIX1 W2 PREFIX2" or "PREFIX1 PREFIX2" (equal weights), or already split words. */
  dataPaths: string | readonly string[];
  seqLength: number;
  /** "99,1,0" (default "100,0,0": everything is train). */
  split?: string;
  splitName?: SplitName;
  seed?: number;
  /** The model's vocabulary: a token id >= vocabSize is refused (naming file, document and token). */
  vocabSize?: number;
  /** The tokenizer in use: shards made with another tokenizer are refused. */
  tokenizerSha256?: string;
  /** Shuffle documents and windows (default true). */
  shuffle?: boolean;
}

export interface SampleSourceComponent {
  path: string;
  weight: number;
  documents: [number, number];
  samplesPerEpoch: number;
}

export interface SampleSource {
  /**
   * Samples in one pass: for one dataset its epoch; for a blend, the samples before any component would start its
   * second epoch. sample(i) accepts any i >= 0 (epochs repeat).
   */
  readonly numSamples: number;
  readonly seqLength: number;
  readonly components: readonly SampleSourceComponent[];
  /**
   * Tokens in each component's document range, in the order of `components` (kept apart from them: the components
   * are what a checkpoint's data fingerprint hashes).
   */
  readonly componentTokens: readonly number[];
  /** seqLength + 1 token ids. */
  sample(i: number): Int32Array;
  close(): void;
}

export function createSampleSource(opts: SampleSourceOptions): SampleSource {
  const paths = parseDataPaths(opts.dataPaths);
  const weights = parseSplit(opts.split ?? '100,0,0');
  const splitName = opts.splitName ?? 'train';
  const seed = opts.seed ?? 1234;
  const opened: TokenDataset[] = [];
  const parts: GptSamples[] = [];
  try {
    paths.forEach((p, k) => {
      const ds = openTokenDataset(p.path, { tokenizerSha256: opts.tokenizerSha256 });
      opened.push(ds);
      if (opts.vocabSize !== undefined && ds.vocabSize !== undefined && ds.vocabSize > opts.vocabSize) {
        throw new FormatError(p.path, `shards were made with a tokenizer of vocab_size ${ds.vocabSize}, larger than the model's ${opts.vocabSize}: ids up to ${ds.vocabSize - 1} can occur. Use a model with vocab_size >= ${ds.vocabSize} or re-tokenize.`);
      }
      const range = splitRanges(ds.numDocuments, weights)[splitName];
      // The dataset's position in the blend is mixed into the seed so that two blended copies are not shuffled alike.
      parts.push(new GptSamples(ds, { seqLength: opts.seqLength, seed: seed + 1000003 * k, range, vocabSize: opts.vocabSize, shuffle: opts.shuffle }));
    });
  } catch (e) {
    for (const ds of opened) ds.close();
    throw e;
  }
  const components = paths.map((p, k) => ({
    path: p.path, weight: p.weight, documents: splitRanges(opened[k].numDocuments, weights)[splitName], samplesPerEpoch: parts[k].samplesPerEpoch,
  }));
  const componentTokens = parts.map((p) => p.numTokens);
  const close = (): void => opened.forEach((d) => d.close());
  if (parts.length === 1) {
    return { numSamples: parts[0].samplesPerEpoch, seqLength: opts.seqLength, components, componentTokens, sample: (i) => parts[0].sample(i), close };
  }
  const empty = components.filter((c) => c.samplesPerEpoch === 0);
  // A blend whose train split lacks a component is a mistake; a small dataset with no valid/test documents is common,
  // and that split of the blend is then simply empty (numSamples 0), as a single empty dataset is.
  if (empty.length > 0 && empty.length < components.length && splitName === 'train') {
    close();
    throw new ConfigError(`--data_paths: ${empty.map((c) => c.path).join(', ')} ha${empty.length > 1 ? 've' : 's'} no ${splitName} samples (split ${opts.split ?? '100,0,0'}, seq_length ${opts.seqLength}) while weighted in the blend. Give more data, change --split, or drop it from the blend.`);
  }
  const blend = new BlendIndex(paths.map((p) => p.weight));
  const numSamples = empty.length > 0 ? 0 : Math.floor(Math.min(...components.map((c) => c.samplesPerEpoch / c.weight)));
  return {
    numSamples, seqLength: opts.seqLength, components, componentTokens, close,
    sample: (i) => {
      if (!Number.isInteger(i) || i < 0) throw new RangeError(`sample index ${i} must be a non-negative integer`);
      if (numSamples === 0) {
        throw new ConfigError(`--data_paths: the ${splitName} split of the blend is empty (${empty.map((c) => c.path).join(', ')} ha${empty.length > 1 ? 've' : 's'} no ${splitName} samples with --split ${opts.split ?? '100,0,0'}). Change --split or give more data.`);
      }
      const { dataset, sample } = blend.at(i);
      return parts[dataset].sample(sample);
    },
  };
}

/**
 * Why a split yields no sample, with the numbers to act on: the documents and tokens each dataset's part of the split
 * holds, the seq_length + 1 tokens one sample needs, and the longest --seq_length this data allows. `part` names the
 * split in the message when "the <name> split (--split ...)" is not how the user chose it.
 */
export function noSamplesMessage(source: SampleSource, o: { split: string; splitName: SplitName; part?: string }): string {
  const part = o.part ?? `the ${o.splitName} split (--split ${o.split})`;
  const share = o.part === undefined ? `, or a larger ${o.splitName} share of --split` : '';
  const need = source.seqLength + 1;
  const held = source.components.map((c, k) => {
    const docs = c.documents[1] - c.documents[0];
    return `${c.path} holds ${source.componentTokens[k]} tokens in ${docs} document${docs === 1 ? '' : 's'}`;
  });
  // Every component must give a sample: the shortest one bounds seq_length (a sample needs more than seq_length tokens).
  const longest = Math.min(...source.componentTokens) - 1;
  const fix = longest >= 1 ? `Use --seq_length ${longest} or less, ${share ? 'more data' : 'or more data'}${share}` : `Give it more data${share}`;
  return `no sample of --seq_length ${source.seqLength} + 1 = ${need} tokens in ${part}: ${held.join('; ')}. ${fix}.`;
}
