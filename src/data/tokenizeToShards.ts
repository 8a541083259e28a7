/**
 * The body of `distill prepare`: documents in, tokenized Arrow shards out, with a throttled progress line.
 * Shared by the CLI and by scripts/buildBrown.ts.
 */
import { ConfigError } from '../errors.ts';
import { ArrowShardWriter, type ShardSummary } from '../io/arrowShards.ts';
import type { TextTokenizer } from './tokenizer.ts';

export interface TokenizeOptions {
  tokenizer: TextTokenizer;
  outDir: string;
  sourceFiles: string[];
  appendEod?: boolean;
  shardTokens?: number;
  batchTokens?: number;
  /** Total input bytes, for the ETA; 0 when unknown. */
  totalBytes?: number;
  /** Where the progress line goes (default stderr); null for none. */
  progress?: NodeJS.WritableStream | null;
}

export interface TokenizeResult extends ShardSummary {
  seconds: number;
  tokensPerSecond: number;
  bytes: number;
}

export function tokenizeToShards(docs: Iterable<{ text: string; bytesDone: number }>, opts: TokenizeOptions): TokenizeResult {
  const tok = opts.tokenizer;
  if (opts.appendEod && tok.eodId === undefined) {
    throw new ConfigError(`--append_eod: ${tok.path} has no "<|endoftext|>" token. Drop --append_eod or use a tokenizer that has one.`);
  }
  const writer = new ArrowShardWriter({
    outDir: opts.outDir, tokenizerSha256: tok.sha256, vocabSize: tok.vocabSize, sourceFiles: opts.sourceFiles,
    shardTokens: opts.shardTokens, batchTokens: opts.batchTokens,
  });
  const out = opts.progress === undefined ? process.stderr : opts.progress;
  const tty = out !== null && 'isTTY' in out && out.isTTY === true;
  // A terminal gets a line rewritten in place a few times a second; a log file a line every few seconds.
  const every = tty ? 250 : 5000;
  const t0 = performance.now();
  let last = t0;
  let bytes = 0;
  let docsDone = 0;
  let tokens = 0;
  const report = (final: boolean): void => {
    if (!out) return;
    const s = (performance.now() - t0) / 1000;
    const rate = tokens / Math.max(s, 1e-9);
    const total = opts.totalBytes ?? 0;
    const frac = total > 0 ? bytes / total : 0;
    const eta = frac > 0 && !final ? ` ETA ${clock((s * (1 - frac)) / frac)}` : '';
    const pct = total > 0 ? ` ${(100 * frac).toFixed(1)}% of ${(total / 1e6).toFixed(1)} MB` : '';
    out.write(`${tty ? '\r' : ''}prepare: ${docsDone} documents, ${tokens} tokens, ${Math.round(rate)} tokens/s${pct}${eta}${final ? ` in ${s.toFixed(1)} s` : ''}${tty && !final ? '' : '\n'}`);
  };
  try {
    for (const d of docs) {
      const ids = tok.encode(d.text);
      if (opts.appendEod) ids.push(tok.eodId as number);
      writer.addDocument(ids);
      docsDone++;
      tokens += ids.length;
      bytes = d.bytesDone;
      const now = performance.now();
      if (now - last >= every) {
        last = now;
        report(false);
      }
    }
  } catch (e) {
    writer.abort();
    throw e;
  }
  const summary = writer.finish();
  report(true);
  const seconds = (performance.now() - t0) / 1000;
  return { ...summary, seconds, tokensPerSecond: summary.tokens / Math.max(seconds, 1e-9), bytes };
}

function clock(s: number): string {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return `${h > 0 ? `${h}:${String(m).padStart(2, '0')}` : m}:${String(sec).padStart(2, '0')}`;
}
