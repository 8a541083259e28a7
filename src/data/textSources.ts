/**
 * Documents from text and JSONL files, streamed line by line with bounded memory (one chunk and one line at a time),
 * each with the count of input bytes consumed so far, for progress and ETA.
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { FormatError } from '../errors.ts';

export interface SourceDocument {
  text: string;
  /** Input bytes consumed over all files, this document included. */
  bytesDone: number;
  file: string;
}

export interface TextSourceOptions {
  /** Each file is one document (text files only). */
  documentPerFile?: boolean;
  /** JSONL key of the text (default "text"). */
  textKey?: string;
}

export const isJsonl = (file: string): boolean => /\.(jsonl|ndjson|json)$/i.test(file);

export function totalBytes(files: readonly string[]): number {
  return files.reduce((n, f) => n + statSync(f).size, 0);
}

/** Lines of a file (without their "\n" or "\r\n"), split on bytes so multi-byte characters are never cut. */
export function* readLines(file: string, chunkBytes = 1 << 20): Generator<{ line: string; lineNo: number; bytesDone: number }> {
  const fd = openSync(file, 'r');
  try {
    const chunk = Buffer.allocUnsafe(chunkBytes);
    let carry: Buffer = Buffer.alloc(0);
    let pos = 0;
    let lineNo = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, chunkBytes, pos);
      const data = n === 0 ? carry : Buffer.concat([carry, chunk.subarray(0, n)]);
      pos += n;
      let start = 0;
      for (let nl = data.indexOf(10, start); nl >= 0; nl = data.indexOf(10, start)) {
        const end = nl > start && data[nl - 1] === 13 ? nl - 1 : nl;
        yield { line: data.toString('utf8', start, end), lineNo: ++lineNo, bytesDone: pos - (data.length - nl - 1) };
        start = nl + 1;
      }
      carry = Buffer.from(data.subarray(start));
      if (n === 0) {
        if (carry.length > 0) yield { line: carry.toString('utf8'), lineNo: ++lineNo, bytesDone: pos };
        return;
      }
    }
  } finally {
    closeSync(fd);
  }
}

export function* readDocuments(files: readonly string[], opts: TextSourceOptions = {}): Generator<SourceDocument> {
  const key = opts.textKey ?? 'text';
  let before = 0;
  for (const file of files) {
    const size = statSync(file).size;
    if (isJsonl(file)) {
      for (const { line, lineNo, bytesDone } of readLines(file)) {
        if (line.trim() === '') continue;
        let obj: unknown;
        try {
          obj = JSON.parse(line);
        } catch (e) {
          throw new FormatError(file, `line ${lineNo}: not valid JSON (${(e as Error).message}). JSONL needs one JSON object per line.`);
        }
        const text = typeof obj === 'object' && obj !== null ? (obj as Record<string, unknown>)[key] : undefined;
        if (typeof text !== 'string') {
          const keys = typeof obj === 'object' && obj !== null ? Object.keys(obj).join(', ') : typeof obj;
          throw new FormatError(file, `line ${lineNo}: no string field "${key}" (found: ${keys}). Pass --text_key with the field that holds the text.`);
        }
        yield { text, bytesDone: before + bytesDone, file };
      }
    } else if (opts.documentPerFile) {
      yield { text: readFileSync(file, 'utf8'), bytesDone: before + size, file };
    } else {
      for (const { line, bytesDone } of readLines(file)) {
        if (line.trim() !== '') yield { text: line, bytesDone: before + bytesDone, file };
      }
    }
    before += size;
  }
}
