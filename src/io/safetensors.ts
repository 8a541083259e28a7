/**
 * safetensors, written to the spec (https://github.com/huggingface/safetensors):
 * u64 LE header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?}`,
 * then the data, row-major little-endian. Offsets are relative to byte 8 + N and must tile the data exactly.
 *
 * The reader keeps a file descriptor and reads one tensor at a time, so a checkpoint larger than memory can be
 * streamed into the backend tensor by tensor. 16-bit floats widen to float32 (tfjs has no 16-bit floats).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { FormatError } from '../errors.ts';
import { writeFileAtomic } from './atomicWrite.ts';

/** The spec's upper bound on the header, checked before anything is allocated. */
export const MAX_HEADER_BYTES = 100_000_000;

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'U16' | 'U32' | 'U64' | 'BOOL';

const BYTES_PER_ELEMENT: Record<SafetensorsDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  U16: 2,
  U32: 4,
  U64: 8,
  BOOL: 1,
};

export interface TensorEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

/** What a read returns: floats widen to float32, integers narrow to int32 (checked), as tfjs holds them. */
export interface HostTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

export class SafetensorsReader {
  readonly entries: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
    entries: Map<string, TensorEntry>,
    metadata: Record<string, string>,
  ) {
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsReader {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new FormatError(path, `cannot open: ${(e as Error).message}`);
    }
    try {
      const { entries, metadata } = parseHeader(path, fd);
      return new SafetensorsReader(path, fd, entries, metadata);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Reads one tensor; F16/BF16/F64 widen or narrow to float32, integer types to int32 (range-checked). */
  read(name: string): HostTensor {
    const e = this.entries.get(name);
    if (!e) throw new FormatError(this.path, `no tensor named "${name}" (the file holds ${this.names().length} tensors)`);
    if (this.fd === null) throw new FormatError(this.path, 'reader already closed');
    const bytes = Buffer.allocUnsafe(e.end - e.begin);
    let got = 0;
    while (got < bytes.length) {
      const n = readSync(this.fd, bytes, got, bytes.length - got, e.begin + got);
      if (n === 0) throw new FormatError(this.path, `tensor "${name}": file ends at byte ${e.begin + got}, expected ${e.end}`);
      got += n;
    }
    return { shape: e.shape, ...decode(this.path, e, bytes) };
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

function parseHeader(path: string, fd: number): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const size = fstatSync(fd).size;
  if (size < 8) throw new FormatError(path, `file is ${size} bytes, shorter than the 8-byte header length; the file is truncated or not safetensors`);
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const n = lenBuf.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new FormatError(path, `header length at byte 0 is ${n}, over the spec's limit of ${MAX_HEADER_BYTES} bytes; not a safetensors file?`);
  }
  const headerLen = Number(n);
  if (8 + headerLen > size) {
    throw new FormatError(path, `header length at byte 0 says ${headerLen} bytes but the file has only ${size - 8} after it; the file is truncated`);
  }
  const hbuf = Buffer.alloc(headerLen);
  readSync(fd, hbuf, 0, headerLen, 8);
  let json: unknown;
  try {
    json = JSON.parse(hbuf.toString('utf8'));
  } catch (e) {
    throw new FormatError(path, `header (bytes 8..${8 + headerLen}) is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new FormatError(path, 'header is not a JSON object');
  }
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = (raw ?? {}) as Record<string, string>;
      continue;
    }
    entries.set(name, checkEntry(path, name, raw, dataStart, dataLen));
  }
  // Offsets must tile the data buffer: sorted by begin, each starts where the previous ended, the last ends at EOF.
  const sorted = [...entries.values()].sort((a, b) => a.begin - b.begin);
  let at = dataStart;
  for (const e of sorted) {
    if (e.begin !== at) {
      throw new FormatError(
        path,
        `tensor "${e.name}" starts at data offset ${e.begin - dataStart} but the previous tensor ends at ${at - dataStart}: offsets must tile the buffer (a gap or an overlap)`,
      );
    }
    at = e.end;
  }
  if (at !== size) {
    throw new FormatError(
      path,
      `tensors end at data offset ${at - dataStart} but the data holds ${dataLen} bytes: the file is truncated or has trailing bytes`,
    );
  }
  return { entries, metadata };
}

function checkEntry(path: string, name: string, raw: unknown, dataStart: number, dataLen: number): TensorEntry {
  const where = `tensor "${name}"`;
  if (typeof raw !== 'object' || raw === null) throw new FormatError(path, `${where}: header entry is not an object`);
  const r = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof r.dtype !== 'string' || !(r.dtype in BYTES_PER_ELEMENT)) {
    throw new FormatError(path, `${where}: unknown dtype ${JSON.stringify(r.dtype)} (known: ${Object.keys(BYTES_PER_ELEMENT).join(', ')})`);
  }
  const dtype = r.dtype as SafetensorsDtype;
  if (!Array.isArray(r.shape) || !r.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new FormatError(path, `${where}: shape ${JSON.stringify(r.shape)} is not a list of non-negative integers`);
  }
  const shape = r.shape as number[];
  const offs = r.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1]) {
    throw new FormatError(path, `${where}: data_offsets ${JSON.stringify(offs)} is not [begin, end] with 0 <= begin <= end`);
  }
  const [b, e] = offs as [number, number];
  if (e > dataLen) {
    throw new FormatError(path, `${where}: data_offsets end ${e} is past the data's ${dataLen} bytes; the file is truncated`);
  }
  let numel = 1;
  for (const d of shape) numel *= d;
  const want = numel * BYTES_PER_ELEMENT[dtype];
  if (e - b !== want) {
    throw new FormatError(path, `${where}: shape [${shape}] of ${dtype} needs ${want} bytes but data_offsets span ${e - b}`);
  }
  return { name, dtype, shape, begin: dataStart + b, end: dataStart + e };
}

function decode(path: string, e: TensorEntry, bytes: Buffer): { dtype: 'float32' | 'int32'; data: Float32Array | Int32Array } {
  const n = (e.end - e.begin) / BYTES_PER_ELEMENT[e.dtype];
  // Copy into an aligned buffer: a tensor's offset in the file need not be a multiple of its element size.
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (e.dtype) {
    case 'F32': {
      // x86 and arm64 are little-endian, like the format: one aligned copy, no per-element decode.
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return { dtype: 'float32', data: out };
    }
    case 'F64': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      return { dtype: 'float32', data: out };
    }
    case 'BF16': {
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = dv.getUint16(i * 2, true) << 16;
      return { dtype: 'float32', data: new Float32Array(u32.buffer) };
    }
    case 'F16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(i * 2, true));
      return { dtype: 'float32', data: out };
    }
    default: {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = readInteger(dv, e.dtype, i);
        if (v > 2147483647 || v < -2147483648) {
          throw new FormatError(path, `tensor "${e.name}": element ${i} = ${v} does not fit int32`);
        }
        out[i] = Number(v);
      }
      return { dtype: 'int32', data: out };
    }
  }
}

function readInteger(dv: DataView, dtype: SafetensorsDtype, i: number): number | bigint {
  switch (dtype) {
    case 'I64':
      return dv.getBigInt64(i * 8, true);
    case 'U64':
      return dv.getBigUint64(i * 8, true);
    case 'I32':
      return dv.getInt32(i * 4, true);
    case 'U32':
      return dv.getUint32(i * 4, true);
    case 'I16':
      return dv.getInt16(i * 2, true);
    case 'U16':
      return dv.getUint16(i * 2, true);
    case 'I8':
      return dv.getInt8(i);
    default:
      return dv.getUint8(i);
  }
}

/** IEEE 754 binary16 to a JS number (subnormals, infinities and NaN included). */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return s * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : s * Infinity;
  return s * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 to bfloat16 bits, rounding to nearest even as PyTorch does; NaN stays NaN. */
export function floatToBf16Bits(f32: Float32Array): Uint16Array {
  const u = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      out[i] = (x >>> 16) | 0x40;
    } else {
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'BF16' | 'I32' | 'I64';
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Serialises tensors to safetensors bytes; names are sorted, as the Python library writes them. */
export function encodeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Buffer {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const parts: Buffer[] = [];
  let offset = 0;
  for (const t of sorted) {
    const buf = encodeData(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + buf.length] };
    parts.push(buf);
    offset += buf.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const hb = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  return Buffer.concat([len, hb, ...parts]);
}

function encodeData(t: TensorToWrite): Buffer {
  let numel = 1;
  for (const d of t.shape) numel *= d;
  if (numel !== t.data.length) throw new Error(`tensor "${t.name}": shape [${t.shape}] holds ${numel} elements, data has ${t.data.length}`);
  switch (t.dtype) {
    case 'F32': {
      const f = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
      return Buffer.from(new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
    }
    case 'BF16': {
      const bits = floatToBf16Bits(t.data instanceof Float32Array ? t.data : Float32Array.from(t.data));
      const b = Buffer.alloc(numel * 2);
      for (let i = 0; i < numel; i++) b.writeUInt16LE(bits[i], i * 2);
      return b;
    }
    case 'I32': {
      const v = t.data instanceof Int32Array ? t.data : Int32Array.from(t.data);
      return Buffer.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
    case 'I64': {
      const b = Buffer.alloc(numel * 8);
      for (let i = 0; i < numel; i++) b.writeBigInt64LE(BigInt(Math.trunc(t.data[i])), i * 8);
      return b;
    }
  }
}

/** Writes a safetensors file atomically: it appears complete under `path` or not at all. */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/** Reads every tensor of a file into memory: for small files (fixtures, `distill infer` inputs). */
export function readAllSafetensors(path: string): Map<string, HostTensor> {
  const r = SafetensorsReader.open(path);
  try {
    return new Map(r.names().map((n) => [n, r.read(n)]));
  } finally {
    r.close();
  }
}
