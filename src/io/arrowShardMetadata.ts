/**
 * The schema metadata of the project's Arrow token shards: what a shard says about how it was made (format and
 * version, tokenizer hash, vocabulary, token dtype, source files), checked when a shard is opened.
 */
import type { Schema } from 'apache-arrow';
import { FormatError } from '../errors.ts';

// The format's names and the metadata's shape live here, below the reader and writer (arrowShards.ts), which both use them.
export const SHARD_FORMAT = 'logit-distill-tokens';
export const SHARD_FORMAT_VERSION = '1';
export type ShardDtype = 'uint8' | 'uint16' | 'uint32';

export interface ShardMetadata {
  tokenizerSha256: string;
  vocabSize: number;
  dtype: ShardDtype;
  sourceFiles: string[];
  formatVersion: string;
}

export function parseMetadata(file: string, schema: Schema): ShardMetadata {
  const m = schema.metadata;
  const need = (k: string): string => {
    const v = m.get(k);
    if (v === undefined)
      throw new FormatError(file, `schema metadata has no "${k}": not a shard written by \`distill prepare\`. Re-run prepare on the source text.`);
    return v;
  };
  if (need('format') !== SHARD_FORMAT) throw new FormatError(file, `schema metadata format is "${m.get('format')}", expected "${SHARD_FORMAT}".`);
  const version = need('format_version');
  if (version !== SHARD_FORMAT_VERSION)
    throw new FormatError(file, `shard format_version ${version}, expected ${SHARD_FORMAT_VERSION}: written by another version of this tool; re-run prepare.`);
  const dtype = need('dtype');
  if (dtype !== 'uint8' && dtype !== 'uint16' && dtype !== 'uint32')
    throw new FormatError(file, `schema metadata dtype "${dtype}", expected uint8, uint16 or uint32.`);
  let sourceFiles: string[] = [];
  try {
    sourceFiles = JSON.parse(need('source_files')) as string[];
  } catch {
    throw new FormatError(file, 'schema metadata source_files is not a JSON array.');
  }
  return { tokenizerSha256: need('tokenizer_sha256'), vocabSize: Number(need('vocab_size')), dtype, sourceFiles, formatVersion: version };
}

/** A shard's token values, in its dtype. */
export type TokenArray = Uint8Array | Uint16Array | Uint32Array;

/** The narrowest unsigned dtype that holds ids 0..vocabSize-1. */
export function shardDtypeFor(vocabSize: number): ShardDtype {
  return vocabSize <= 256 ? 'uint8' : vocabSize <= 65536 ? 'uint16' : 'uint32';
}

/** The bytes of a token array, as the CRC-32 of each document covers them. */
export const bytesOf = (a: TokenArray): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
