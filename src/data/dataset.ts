/**
 * One interface over the two on-disk token formats: the project's Arrow shards and Megatron/NeMo indexed datasets.
 * Everything above (splits, samples, blends) sees only documents of token ids.
 */
import { statSync } from 'node:fs';
import { ConfigError, FormatError } from '../errors.ts';
import { ArrowShardDataset } from '../io/arrowShards.ts';
import { isMegatronPrefix, MegatronIndexedDataset } from '../io/megatronIndexed.ts';

export interface TokenDataset {
  /** The path given (a Megatron prefix, a shard directory or a .arrow file), for messages. */
  readonly path: string;
  readonly kind: 'arrow' | 'megatron';
  readonly numDocuments: number;
  readonly numTokens: number;
  /** From shard metadata; Megatron datasets do not record it. */
  readonly tokenizerSha256: string | undefined;
  readonly vocabSize: number | undefined;
  /** Tokens in document i, without reading them. */
  documentLength(i: number): number;
  /** All tokens of document i. */
  document(i: number): Int32Array;
  /** Document i as stored: Megatron's sentence-split sequences, or one sequence for Arrow shards. */
  documentSequences(i: number): Int32Array[];
  /** The file that holds document i, for error messages. */
  fileOf(i: number): string;
  close(): void;
}

export interface OpenOptions {
  /** When given, shards whose metadata names another tokenizer are refused. */
  tokenizerSha256?: string;
}

export function openTokenDataset(path: string, opts: OpenOptions = {}): TokenDataset {
  let ds: TokenDataset;
  if (isMegatronPrefix(path)) {
    const m = new MegatronIndexedDataset(path);
    let tokens = 0;
    for (let s = 0; s < m.numSequences; s++) tokens += m.sequenceLengths[s];
    ds = {
      path, kind: 'megatron', numDocuments: m.numDocuments, numTokens: tokens, tokenizerSha256: undefined, vocabSize: undefined,
      documentLength: (i) => m.documentLength(i),
      document: (i) => m.document(i),
      documentSequences: (i) => m.documentSequences(i),
      fileOf: () => m.binPath,
      close: () => m.close(),
    };
  } else if (isArrowPath(path)) {
    const a = new ArrowShardDataset(path);
    ds = {
      path, kind: 'arrow', numDocuments: a.numDocuments, numTokens: a.numTokens,
      tokenizerSha256: a.metadata.tokenizerSha256, vocabSize: a.metadata.vocabSize,
      documentLength: (i) => a.documentLength(i),
      document: (i) => a.document(i),
      documentSequences: (i) => a.documentSequences(i),
      fileOf: () => a.path,
      close: () => a.close(),
    };
    if (opts.tokenizerSha256 !== undefined && opts.tokenizerSha256 !== a.metadata.tokenizerSha256) {
      a.close();
      throw new FormatError(path, `shards were tokenized with tokenizer sha256 ${a.metadata.tokenizerSha256}, but the tokenizer in use has sha256 ${opts.tokenizerSha256}. Token ids would mean different text: re-run \`distill prepare\` with this tokenizer, or use the tokenizer the shards were made with.`);
    }
  } else {
    throw new ConfigError(`--data_paths: no dataset at ${path}: expected a Megatron prefix (${path}.idx and ${path}.bin), a directory of .arrow shards, or a .arrow file`);
  }
  return ds;
}

function isArrowPath(path: string): boolean {
  try {
    const st = statSync(path);
    return st.isDirectory() || (st.isFile() && path.endsWith('.arrow'));
  } catch {
    return false;
  }
}
