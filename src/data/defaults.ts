/**
 * The embedded default dataset: the Brown corpus, tokenized with a 4096-token byte-level BPE trained on it, shipped in
 * data/brown/ (built by `npm run build-data`), so `npm start` trains with no arguments and no download.
 */
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The --data_paths value of the shipped dataset: the directory of its Arrow shards. */
export function defaultDataPaths(): string {
  return resolve(ROOT, 'data/brown');
}

/** The tokenizer.json the shipped shards were made with. */
export function defaultTokenizerPath(): string {
  return resolve(ROOT, 'data/brown/tokenizer.json');
}
