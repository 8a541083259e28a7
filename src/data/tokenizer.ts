/**
 * A Hugging Face tokenizer.json, loaded with the pure-JS `@huggingface/tokenizers`, plus what the data pipeline needs
 * around it: the vocabulary size (for the narrowest shard dtype and the id < vocab check) and the sha256 of the file
 * (recorded in every shard, so a model is never trained on ids from another tokenizer).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { ConfigError, FormatError } from '../errors.ts';

export const EOD_TOKEN = '<|endoftext|>';

export interface TextTokenizer {
  readonly path: string;
  /** sha256 (hex) of the tokenizer.json bytes. */
  readonly sha256: string;
  /** One more than the largest id, added tokens included. */
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`, or undefined when the vocabulary has none. */
  readonly eodId: number | undefined;
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
}

export function loadTokenizer(path: string): TextTokenizer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new ConfigError(`tokenizer: cannot read ${path}: ${(e as Error).message}. Pass --tokenizer PATH/tokenizer.json.`);
  }
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new FormatError(path, `not valid JSON (${(e as Error).message}). Pass a Hugging Face tokenizer.json.`);
  }
  if (typeof json !== 'object' || json === null || !('model' in json)) {
    throw new FormatError(path, `no "model" key: expected a Hugging Face tokenizer.json (tokenizer_config.json or vocab.json alone are not enough).`);
  }
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, {});
  } catch (e) {
    throw new FormatError(path, `@huggingface/tokenizers cannot load it: ${(e as Error).message}`);
  }
  let maxId = -1;
  for (const id of tok.get_vocab(true).values()) maxId = Math.max(maxId, id);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  return {
    path,
    sha256,
    vocabSize: maxId + 1,
    eodId: tok.token_to_id(EOD_TOKEN),
    // No special tokens are added around a document: EOD is appended explicitly by --append_eod, as Megatron does.
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    // clean_up_tokenization_spaces would turn " ." into "." and break the text round trip.
    // @huggingface/tokenizers throws a plain Error on an empty id list; an empty document decodes to ''.
    decode: (ids) => (ids.length === 0 ? '' : tok.decode(Array.from(ids), { skip_special_tokens: false, clean_up_tokenization_spaces: false })),
  };
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}
