/**
 * Megatron/NeMo indexed datasets (`prefix.idx` + `prefix.bin`), read in place and written for tests and tools.
 *
 * `.idx` (little-endian): `MMIDIDX\x00\x00`, u64 version 1, u8 dtype code, u64 sequence count S, u64 document count D,
 * int32[S] sequence lengths (in tokens), int64[S] byte pointers into `.bin`, int64[D] document indices (a document is the
 * sequences [idx[j], idx[j+1]), so D = documents + 1, starting at 0 and ending at S). The arrays start at byte 34, which
 * is not aligned for their element types, so they are read through a DataView rather than viewed in place.
 *
 * The `.idx` is read whole (12 bytes per sequence + 8 per document); the `.bin` is never loaded: each sequence is read
 * with one positioned read, so a dataset far larger than memory can be sampled at random.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { FormatError } from '../errors.ts';
import { writeFileAtomic } from './atomicWrite.ts';

export type MegatronDtype = 'uint8' | 'int8' | 'int16' | 'int32' | 'int64' | 'float64' | 'float32' | 'uint16';

/** Megatron's DType codes (megatron/core/datasets/indexed_dataset.py). */
export const MEGATRON_DTYPE_CODES: Readonly<Record<number, MegatronDtype>> = {
  1: 'uint8',
  2: 'int8',
  3: 'int16',
  4: 'int32',
  5: 'int64',
  6: 'float64',
  7: 'float32',
  8: 'uint16',
};
const CODE_OF: Record<MegatronDtype, number> = {
  uint8: 1,
  int8: 2,
  int16: 3,
  int32: 4,
  int64: 5,
  float64: 6,
  float32: 7,
  uint16: 8,
};
export const MEGATRON_ITEM_SIZE: Readonly<Record<MegatronDtype, number>> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  float64: 8,
  float32: 4,
  uint16: 2,
};

const MAGIC = Buffer.from('MMIDIDX\x00\x00', 'latin1');
const HEADER_BYTES = 34;

export class MegatronIndexedDataset {
  readonly idxPath: string;
  readonly binPath: string;
  readonly dtype: MegatronDtype;
  readonly numSequences: number;
  /** Number of documents (the .idx document count minus one). */
  readonly numDocuments: number;
  /** Tokens per sequence. */
  readonly sequenceLengths: Int32Array;
  /** Byte offset of each sequence in .bin. */
  readonly sequencePointers: Float64Array;
  /** D = numDocuments + 1 entries: document j is sequences [documentIndices[j], documentIndices[j + 1]). */
  readonly documentIndices: Float64Array;
  private fd: number | null;
  private readonly itemSize: number;

  constructor(readonly prefix: string) {
    this.idxPath = `${prefix}.idx`;
    this.binPath = `${prefix}.bin`;
    const idx = readOrExplain(this.idxPath);
    const f = this.idxPath;
    if (idx.length < HEADER_BYTES) {
      throw new FormatError(
        f,
        `truncated header at byte ${idx.length}: found ${idx.length} bytes, expected at least ${HEADER_BYTES}. The file was cut short; rebuild the dataset (prefix ${prefix}).`,
      );
    }
    const magic = idx.subarray(0, 9);
    if (!magic.equals(MAGIC)) {
      throw new FormatError(
        f,
        `bad magic at byte 0: found ${JSON.stringify(magic.toString('latin1'))}, expected "MMIDIDX\\x00\\x00". This is not a Megatron indexed-dataset index (mmap format); pass the prefix of a .idx/.bin pair written by Megatron's preprocess_data.py.`,
      );
    }
    const dv = new DataView(idx.buffer, idx.byteOffset, idx.byteLength);
    const version = dv.getBigUint64(9, true);
    if (version !== 1n) {
      throw new FormatError(
        f,
        `unsupported version at byte 9: found ${version}, expected 1. Re-export the dataset with a Megatron-LM version that writes version 1.`,
      );
    }
    const code = dv.getUint8(17);
    const dtype = MEGATRON_DTYPE_CODES[code];
    if (dtype === undefined) {
      throw new FormatError(
        f,
        `unknown dtype code at byte 17: found ${code}, expected one of 1..8 (${Object.entries(MEGATRON_DTYPE_CODES)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}). The index is corrupt or from an unknown writer.`,
      );
    }
    this.dtype = dtype;
    this.itemSize = MEGATRON_ITEM_SIZE[dtype];
    const S = safeNumber(f, dv.getBigUint64(18, true), 18, 'sequence count');
    const D = safeNumber(f, dv.getBigUint64(26, true), 26, 'document count');
    const expected = HEADER_BYTES + 12 * S + 8 * D;
    if (idx.length !== expected) {
      throw new FormatError(
        f,
        `size mismatch at byte ${Math.min(idx.length, expected)}: found ${idx.length} bytes, expected ${expected} (34-byte header + 12 bytes x ${S} sequences + 8 bytes x ${D} document indices). The index is ${idx.length < expected ? 'truncated' : 'followed by extra bytes'}; rebuild it.`,
      );
    }
    if (D < 1) {
      throw new FormatError(f, `document count at byte 26: found 0, expected at least 1 (the leading 0 of the document indices). Rebuild the index.`);
    }
    this.numSequences = S;
    this.numDocuments = D - 1;
    this.sequenceLengths = new Int32Array(S);
    this.sequencePointers = new Float64Array(S);
    this.documentIndices = new Float64Array(D);
    const binSize = statOrExplain(this.binPath).size;
    const lenAt = HEADER_BYTES;
    const ptrAt = lenAt + 4 * S;
    const docAt = ptrAt + 8 * S;
    for (let i = 0; i < S; i++) {
      const len = dv.getInt32(lenAt + 4 * i, true);
      if (len < 0)
        throw new FormatError(f, `negative length at byte ${lenAt + 4 * i} (sequence ${i}): found ${len}, expected >= 0. The index is corrupt; rebuild it.`);
      const ptr = Number(dv.getBigInt64(ptrAt + 8 * i, true));
      const end = ptr + len * this.itemSize;
      if (ptr < 0 || end > binSize) {
        throw new FormatError(
          f,
          `pointer out of range at byte ${ptrAt + 8 * i} (sequence ${i}): found bytes [${ptr}, ${end}) of ${this.binPath}, expected within its ${binSize} bytes. The .bin is truncated or belongs to another index; rebuild the pair.`,
        );
      }
      this.sequenceLengths[i] = len;
      this.sequencePointers[i] = ptr;
    }
    let prev = 0;
    for (let j = 0; j < D; j++) {
      const at = docAt + 8 * j;
      const v = Number(dv.getBigInt64(at, true));
      const want = j === 0 ? 'expected 0 (the first document starts at sequence 0)' : `expected a value in [${prev}, ${S}] (indices must not decrease)`;
      if ((j === 0 && v !== 0) || v < prev || v > S) {
        throw new FormatError(f, `bad document index at byte ${at} (entry ${j}): found ${v}, ${want}. The index is corrupt; rebuild it.`);
      }
      this.documentIndices[j] = v;
      prev = v;
    }
    if (prev !== S) {
      throw new FormatError(
        f,
        `bad last document index at byte ${docAt + 8 * (D - 1)}: found ${prev}, expected ${S} (the sequence count), so that every sequence belongs to a document. The index is corrupt; rebuild it.`,
      );
    }
    this.fd = openSync(this.binPath, 'r');
  }

  /** Tokens in document i over all its sequences, without reading .bin. */
  documentLength(i: number): number {
    this.checkDocument(i);
    let n = 0;
    for (let s = this.documentIndices[i]; s < this.documentIndices[i + 1]; s++) n += this.sequenceLengths[s];
    return n;
  }

  /** The token ids of sequence s, read from .bin with one positioned read. */
  sequence(s: number): Int32Array {
    if (!Number.isInteger(s) || s < 0 || s >= this.numSequences) {
      throw new RangeError(`${this.prefix}: sequence ${s} out of range [0, ${this.numSequences})`);
    }
    if (this.fd === null) throw new Error(`${this.prefix}: dataset is closed`);
    const len = this.sequenceLengths[s];
    const bytes = Buffer.allocUnsafe(len * this.itemSize);
    let got = 0;
    while (got < bytes.length) {
      const n = readSync(this.fd, bytes, got, bytes.length - got, this.sequencePointers[s] + got);
      if (n === 0) {
        throw new FormatError(
          this.binPath,
          `short read at byte ${this.sequencePointers[s] + got} (sequence ${s}): found end of file, expected ${bytes.length - got} more bytes. The .bin shrank after the index was opened; rebuild the pair.`,
        );
      }
      got += n;
    }
    return decodeTokens(bytes, this.dtype, len);
  }

  /** The sequences (e.g. sentences) of document i, as stored. */
  documentSequences(i: number): Int32Array[] {
    this.checkDocument(i);
    const out: Int32Array[] = [];
    for (let s = this.documentIndices[i]; s < this.documentIndices[i + 1]; s++) out.push(this.sequence(s));
    return out;
  }

  /** All tokens of document i, its sequences concatenated. */
  document(i: number): Int32Array {
    const seqs = this.documentSequences(i);
    if (seqs.length === 1) return seqs[0];
    const out = new Int32Array(seqs.reduce((n, s) => n + s.length, 0));
    let o = 0;
    for (const s of seqs) {
      out.set(s, o);
      o += s.length;
    }
    return out;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  private checkDocument(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.numDocuments) {
      throw new RangeError(`${this.prefix}: document ${i} out of range [0, ${this.numDocuments})`);
    }
  }
}

/** True when prefix.idx exists: the prefix names a Megatron dataset. */
export function isMegatronPrefix(prefix: string): boolean {
  try {
    return statSync(`${prefix}.idx`).isFile();
  } catch {
    return false;
  }
}

function decodeTokens(bytes: Buffer, dtype: MegatronDtype, n: number): Int32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Int32Array(n);
  switch (dtype) {
    case 'uint8':
      for (let i = 0; i < n; i++) out[i] = dv.getUint8(i);
      break;
    case 'int8':
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      break;
    case 'int16':
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(2 * i, true);
      break;
    case 'uint16':
      for (let i = 0; i < n; i++) out[i] = dv.getUint16(2 * i, true);
      break;
    case 'int32':
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      break;
    // Token ids fit in int32; wider dtypes are accepted because Megatron allows them for small vocabularies too.
    case 'int64':
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(8 * i, true));
      break;
    case 'float32':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      break;
    case 'float64':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      break;
  }
  return out;
}

function encodeTokens(tokens: ArrayLike<number>, dtype: MegatronDtype): Buffer {
  const size = MEGATRON_ITEM_SIZE[dtype];
  const buf = Buffer.alloc(tokens.length * size);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    switch (dtype) {
      case 'uint8':
        dv.setUint8(i, t);
        break;
      case 'int8':
        dv.setInt8(i, t);
        break;
      case 'int16':
        dv.setInt16(2 * i, t, true);
        break;
      case 'uint16':
        dv.setUint16(2 * i, t, true);
        break;
      case 'int32':
        dv.setInt32(4 * i, t, true);
        break;
      case 'int64':
        dv.setBigInt64(8 * i, BigInt(t), true);
        break;
      case 'float32':
        dv.setFloat32(4 * i, t, true);
        break;
      case 'float64':
        dv.setFloat64(8 * i, t, true);
        break;
    }
  }
  return buf;
}

/**
 * Writes prefix.bin and prefix.idx (each atomically) the way Megatron's IndexedDatasetBuilder does: documents are lists
 * of sequences, pointers are cumulative byte offsets, document indices start at 0 and end at the sequence count.
 */
export function writeMegatronIndexed(prefix: string, documents: ArrayLike<number>[][], dtype: MegatronDtype): void {
  const seqs = documents.flat();
  const size = MEGATRON_ITEM_SIZE[dtype];
  writeFileAtomic(`${prefix}.bin`, Buffer.concat(seqs.map((s) => encodeTokens(s, dtype))));
  const S = seqs.length;
  const D = documents.length + 1;
  const idx = Buffer.alloc(HEADER_BYTES + 12 * S + 8 * D);
  const dv = new DataView(idx.buffer, idx.byteOffset, idx.byteLength);
  MAGIC.copy(idx, 0);
  dv.setBigUint64(9, 1n, true);
  dv.setUint8(17, CODE_OF[dtype]);
  dv.setBigUint64(18, BigInt(S), true);
  dv.setBigUint64(26, BigInt(D), true);
  let ptr = 0;
  seqs.forEach((s, i) => {
    dv.setInt32(HEADER_BYTES + 4 * i, s.length, true);
    dv.setBigInt64(HEADER_BYTES + 4 * S + 8 * i, BigInt(ptr), true);
    ptr += s.length * size;
  });
  let count = 0;
  const docAt = HEADER_BYTES + 12 * S;
  dv.setBigInt64(docAt, 0n, true);
  documents.forEach((d, j) => {
    count += d.length;
    dv.setBigInt64(docAt + 8 * (j + 1), BigInt(count), true);
  });
  writeFileAtomic(`${prefix}.idx`, idx);
}

function safeNumber(file: string, v: bigint, at: number, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new FormatError(file, `${what} at byte ${at}: found ${v}, expected a count below 2^53. The index is corrupt; rebuild it.`);
  }
  return Number(v);
}

function readOrExplain(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new FormatError(path, `cannot read: ${(e as Error).message}. A Megatron dataset is given by its prefix: PREFIX.idx and PREFIX.bin must both exist.`);
  }
}

function statOrExplain(path: string): { size: number } {
  try {
    const fd = openSync(path, 'r');
    try {
      return fstatSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw new FormatError(path, `cannot read: ${(e as Error).message}. The .bin that goes with the .idx is missing; copy both files of the prefix.`);
  }
}
