/**
 * `distill prepare --input FILES --tokenizer tokenizer.json --out DIR [--append_eod] [--text_key text]
 * [--shard_tokens N] [--document_per_file]`: tokenize text (one document per line, or per file) and JSONL into the
 * project's Arrow shards, streaming (bounded memory), with a progress line on stderr.
 */
import { statSync } from 'node:fs';
import { ConfigError } from '../errors.ts';
import { parseFlags, required, usage } from './flags.ts';
import { loadTokenizer } from '../data/tokenizer.ts';
import { readDocuments, totalBytes } from '../data/textSources.ts';
import { tokenizeToShards, type TokenizeResult } from '../data/tokenizeToShards.ts';

const FLAGS = {
  input: { kind: 'string', help: 'input files, comma-separated (also as positional arguments); .jsonl/.json/.ndjson are JSONL' },
  tokenizer: { kind: 'string', help: 'Hugging Face tokenizer.json' },
  out: { kind: 'string', help: 'output directory for shard-NNNNN.arrow and manifest.json' },
  append_eod: { kind: 'boolean', help: 'append <|endoftext|> to every document' },
  text_key: { kind: 'string', help: 'JSONL field holding the text', default: 'text' },
  document_per_file: { kind: 'boolean', help: 'each text file is one document (default: one document per non-empty line)' },
  shard_tokens: { kind: 'int', help: 'start a new shard file after this many tokens', default: 1 << 26, min: 1 },
  batch_tokens: { kind: 'int', help: 'flush an Arrow record batch after this many tokens', default: 1 << 20, min: 1 },
  quiet: { kind: 'boolean', help: 'no progress line' },
  help: { kind: 'boolean', help: 'show this help' },
} as const;

const CMD = 'distill prepare';

export async function prepareMain(argv: string[]): Promise<void> {
  prepare(argv);
}

/** The command, synchronous, returning its figures (for tests and scripts). */
export function prepare(argv: string[]): TokenizeResult | null {
  const { flags: f, positional } = parseFlags(argv, FLAGS, CMD);
  if (f.help) {
    console.log(usage(CMD, 'Tokenize text or JSONL into Arrow token shards.', FLAGS));
    return null;
  }
  const inputs = [...(f.input ?? '').split(','), ...positional].map((s) => s.trim()).filter((s) => s !== '');
  if (inputs.length === 0) throw new ConfigError(`${CMD}: --input is required (one or more files, comma-separated)`);
  for (const p of inputs) {
    let ok = false;
    try {
      ok = statSync(p).isFile();
    } catch {
      // reported below
    }
    if (!ok) throw new ConfigError(`${CMD}: --input ${p} is not a readable file`);
  }
  const tokenizer = loadTokenizer(required(CMD, 'tokenizer', f.tokenizer));
  const outDir = required(CMD, 'out', f.out);
  const result = tokenizeToShards(readDocuments(inputs, { documentPerFile: f.document_per_file, textKey: f.text_key }), {
    tokenizer,
    outDir,
    sourceFiles: inputs,
    appendEod: f.append_eod,
    shardTokens: f.shard_tokens,
    batchTokens: f.batch_tokens,
    totalBytes: totalBytes(inputs),
    progress: f.quiet ? null : process.stderr,
  });
  console.log(
    JSON.stringify({
      out: outDir,
      shards: result.shards.length,
      documents: result.documents,
      tokens: result.tokens,
      seconds: +result.seconds.toFixed(2),
      tokens_per_second: Math.round(result.tokensPerSecond),
    }),
  );
  return result;
}
