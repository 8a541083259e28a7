/**
 * A small byte-level BPE trainer (GPT-2 style) whose output is a Hugging Face tokenizer.json: the embedded default
 * dataset needs a tokenizer of its own, trained on Brown, that any HF-compatible loader reads.
 *
 * Algorithm: count pre-tokenized words, start from the 256 byte symbols, and repeatedly merge the most frequent
 * adjacent pair (ties: the pair whose symbols come first in id order, so training is deterministic). Pair counts are
 * kept incrementally with an index pair -> words, so a merge only revisits the words that contain that pair.
 */
import { BYTE_TO_UNICODE, GPT2_SPLIT, toByteLevel } from './byteLevel.ts';

export interface BpeTrainOptions {
  vocabSize: number;
  /** Special tokens, given ids 0.. in order (e.g. ['<|endoftext|>']). */
  specialTokens?: string[];
  /** Pairs seen fewer times than this are not merged. */
  minFrequency?: number;
}

export interface TokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: { id: number; content: string; single_word: boolean; lstrip: boolean; rstrip: boolean; normalized: boolean; special: boolean }[];
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  post_processor: null;
  decoder: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  model: {
    type: 'BPE'; dropout: null; unk_token: null; continuing_subword_prefix: null; end_of_word_suffix: null;
    fuse_unk: boolean; byte_fallback: boolean; ignore_merges: boolean;
    vocab: Record<string, number>; merges: [string, string][];
  };
}

/** Counts the byte-level words of a text stream (call once per document or chunk). */
export class WordCounter {
  readonly counts = new Map<string, number>();
  add(text: string): void {
    for (const m of text.matchAll(GPT2_SPLIT)) {
      const w = toByteLevel(m[0]);
      this.counts.set(w, (this.counts.get(w) ?? 0) + 1);
    }
  }
}

export function trainByteLevelBpe(words: Map<string, number>, opts: BpeTrainOptions): TokenizerJson {
  const specials = opts.specialTokens ?? ['<|endoftext|>'];
  const minFreq = opts.minFrequency ?? 2;
  // Symbols: specials, then the 256 byte characters in code-point order (as HF's trainer orders its alphabet).
  const symbols: string[] = [...specials, ...[...BYTE_TO_UNICODE].sort()];
  const idOf = new Map<string, number>(symbols.map((s, i) => [s, i]));
  if (opts.vocabSize < symbols.length) throw new RangeError(`vocabSize ${opts.vocabSize} is below the ${symbols.length} base symbols`);

  // Words sorted so that iteration order, and thus ties, never depend on insertion order.
  const entries = [...words.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const wordSyms: number[][] = entries.map(([w]) => [...w].map((c) => idOf.get(c) as number));
  const freq = entries.map(([, f]) => f);

  const SHIFT = 1 << 16; // vocab < 65536, so a pair packs into one number
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (wi: number, sign: 1 | -1): void => {
    const s = wordSyms[wi];
    for (let k = 0; k + 1 < s.length; k++) {
      const key = s[k] * SHIFT + s[k + 1];
      const c = (pairCount.get(key) ?? 0) + sign * freq[wi];
      // Drop exhausted pairs so the arg-max scan stays proportional to the live pairs.
      if (c === 0) pairCount.delete(key);
      else pairCount.set(key, c);
      if (sign > 0) {
        let set = pairWords.get(key);
        if (!set) pairWords.set(key, (set = new Set()));
        set.add(wi);
      }
    }
  };
  for (let wi = 0; wi < wordSyms.length; wi++) addPairs(wi, 1);

  const merges: [string, string][] = [];
  while (symbols.length < opts.vocabSize) {
    let best = -1;
    let bestCount = 0;
    for (const [key, c] of pairCount) {
      if (c > bestCount || (c === bestCount && c > 0 && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (best < 0 || bestCount < minFreq) break;
    const a = Math.floor(best / SHIFT);
    const b = best % SHIFT;
    const merged = symbols[a] + symbols[b];
    const newId = symbols.length;
    symbols.push(merged);
    idOf.set(merged, newId);
    merges.push([symbols[a], symbols[b]]);
    const affected = pairWords.get(best) ?? new Set<number>();
    for (const wi of affected) {
      addPairs(wi, -1);
      const s = wordSyms[wi];
      const out: number[] = [];
      for (let k = 0; k < s.length; k++) {
        if (k + 1 < s.length && s[k] === a && s[k + 1] === b) {
          out.push(newId);
          k++;
        } else out.push(s[k]);
      }
      wordSyms[wi] = out;
      addPairs(wi, 1);
    }
    pairCount.delete(best);
    pairWords.delete(best);
  }

  const vocab: Record<string, number> = {};
  symbols.forEach((s, i) => (vocab[s] = i));
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, id) => ({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', ...byteLevel },
    post_processor: null,
    decoder: { type: 'ByteLevel', ...byteLevel },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
}
