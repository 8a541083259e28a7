/**
 * GPT-2's byte-level alphabet: every byte maps to one printable Unicode character, so BPE works on bytes while the
 * vocabulary stays valid JSON text. Must be the exact table of the Hugging Face ByteLevel pre-tokenizer/decoder,
 * or a tokenizer.json written here would decode to different bytes there.
 */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b); // '!'..'~'
  for (let b = 161; b <= 172; b++) keep.push(b); // '¡'..'¬'
  for (let b = 174; b <= 255; b++) keep.push(b); // '®'..'ÿ'
  const table = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = keep.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return table;
})();

export const UNICODE_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_UNICODE.map((c, b) => [c, b]));

/** GPT-2's pre-tokenizer split (the ByteLevel pre-tokenizer with use_regex: true). */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const encoder = new TextEncoder();

/** A pre-tokenized piece of text in the byte-level alphabet. */
export function toByteLevel(piece: string): string {
  let s = '';
  for (const b of encoder.encode(piece)) s += BYTE_TO_UNICODE[b];
  return s;
}
