/**
 * A dependency-free TensorBoard event-file writer for scalar summaries.
 *
 * The file is a TFRecord stream: each record is
 *   u64 LE length | u32 masked CRC-32C(length bytes) | data | u32 masked CRC-32C(data)
 * and each `data` is a serialized `tensorflow.Event` protobuf. Only the handful of fields a scalar
 * curve needs are encoded, by hand, so that logging does not pull in TensorFlow or a protobuf runtime.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { crc32c, maskCrc32c } from './crc.ts';

/** The version string TensorBoard expects in the first record of every event file. */
export const FILE_VERSION = 'brain.Event:2';

export interface ScalarValue {
  tag: string;
  value: number;
}

export interface EventFields {
  /** Seconds since the Unix epoch, fractional. */
  wallTime: number;
  step: number;
  fileVersion?: string;
  scalars?: readonly ScalarValue[];
}

// Protobuf wire types used here.
const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const FIXED32 = 5;

/** Growable byte buffer with the few protobuf primitives the Event message needs. */
class ProtoWriter {
  private buf = new Uint8Array(64);
  private len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** Unsigned varint; BigInt so that int64 steps past 2^31 (and negatives, as 10-byte two's complement) are exact. */
  varint(value: bigint): void {
    let v = BigInt.asUintN(64, value);
    this.ensure(10);
    while (v >= 0x80n) {
      this.buf[this.len++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.len++] = Number(v);
  }

  tag(field: number, wireType: number): void {
    this.varint(BigInt((field << 3) | wireType));
  }

  double(field: number, value: number): void {
    this.tag(field, FIXED64);
    this.ensure(8);
    new DataView(this.buf.buffer).setFloat64(this.len, value, true);
    this.len += 8;
  }

  float(field: number, value: number): void {
    this.tag(field, FIXED32);
    this.ensure(4);
    new DataView(this.buf.buffer).setFloat32(this.len, value, true);
    this.len += 4;
  }

  int64(field: number, value: number): void {
    this.tag(field, VARINT);
    this.varint(BigInt(Math.trunc(value)));
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, LEN);
    this.varint(BigInt(data.length));
    this.ensure(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
  }

  string(field: number, s: string): void {
    this.bytes(field, new TextEncoder().encode(s));
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/**
 * Serializes an Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
 * summary = 5 (Summary { repeated Value value = 1 { tag = 1 (string), simple_value = 2 (float) } }).
 */
export function encodeEvent(e: EventFields): Uint8Array {
  const w = new ProtoWriter();
  w.double(1, e.wallTime);
  // proto3 omits default values; TensorFlow's own first record (24 bytes) has no step field either.
  if (e.step !== 0) w.int64(2, e.step);
  if (e.fileVersion !== undefined) w.string(3, e.fileVersion);
  if (e.scalars && e.scalars.length > 0) {
    const summary = new ProtoWriter();
    for (const s of e.scalars) {
      const value = new ProtoWriter();
      value.string(1, s.tag);
      value.float(2, s.value);
      summary.bytes(1, value.finish());
    }
    w.bytes(5, summary.finish());
  }
  return w.finish();
}

/** Wraps `data` in TFRecord framing (length, masked CRC of length, data, masked CRC of data). */
export function frameRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskCrc32c(crc32c(out.subarray(0, 8))), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskCrc32c(crc32c(data)), true);
  return out;
}

export interface TensorBoardWriterOptions {
  /** Defaults to os.hostname(); part of the file name so runs on several hosts into one dir do not collide. */
  hostname?: string;
  /** Clock in milliseconds since the epoch; injectable for tests. */
  now?: () => number;
  /** Buffered bytes are written and fsynced at least this often (default 10 s). */
  flushIntervalMs?: number;
  /** ... or once this many bytes are buffered (default 64 KiB). */
  flushBytes?: number;
}

/**
 * Appends scalar events to `events.out.tfevents.<unix seconds>.<hostname>` in `dir`.
 * Records are buffered and written in batches; `close()` (or `flush()`) makes them durable.
 */
export class TensorBoardWriter {
  readonly path: string;
  private fd: number;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private lastFlush: number;
  private readonly now: () => number;
  private readonly flushIntervalMs: number;
  private readonly flushBytes: number;

  private constructor(path: string, fd: number, opts: TensorBoardWriterOptions) {
    this.path = path;
    this.fd = fd;
    this.now = opts.now ?? Date.now;
    this.flushIntervalMs = opts.flushIntervalMs ?? 10_000;
    this.flushBytes = opts.flushBytes ?? 64 * 1024;
    this.lastFlush = this.now();
  }

  static open(dir: string, opts: TensorBoardWriterOptions = {}): TensorBoardWriter {
    mkdirSync(dir, { recursive: true });
    const now = opts.now ?? Date.now;
    const t = now();
    // The host name is sanitized because it becomes part of a file name.
    const host = (opts.hostname ?? osHostname()).replace(/[^A-Za-z0-9._-]/g, '_');
    const base = join(dir, `events.out.tfevents.${Math.floor(t / 1000)}.${host}`);
    // A second writer in the same second (e.g. a quick restart) must not interleave with the first file:
    // TensorBoard reads every file whose name contains "tfevents", so a numeric suffix is still picked up.
    let path = base;
    let fd = -1;
    for (let i = 1; fd < 0; i++) {
      try {
        fd = openSync(path, 'wx');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || i > 1000) throw e;
        path = `${base}.${i}`;
      }
    }
    const w = new TensorBoardWriter(path, fd, opts);
    w.writeEvent({ wallTime: t / 1000, step: 0, fileVersion: FILE_VERSION });
    w.flush();
    return w;
  }

  /** Logs one scalar; `wallTime` defaults to now. */
  scalar(tag: string, value: number, step: number, wallTime?: number): void {
    this.writeEvent({ wallTime: wallTime ?? this.now() / 1000, step, scalars: [{ tag, value }] });
  }

  /**
   * Logs several scalars at one step as one event. Non-finite and missing values are skipped:
   * a NaN loss is already visible in metrics.jsonl, and TensorBoard would draw it as a gap anyway.
   */
  scalars(values: Readonly<Record<string, number | undefined>>, step: number, wallTime?: number): void {
    const list: ScalarValue[] = [];
    for (const [tag, value] of Object.entries(values)) {
      if (value !== undefined && Number.isFinite(value)) list.push({ tag, value });
    }
    if (list.length === 0) return;
    this.writeEvent({ wallTime: wallTime ?? this.now() / 1000, step, scalars: list });
  }

  writeEvent(e: EventFields): void {
    if (this.fd < 0) throw new Error(`TensorBoardWriter for ${this.path} is closed`);
    const rec = frameRecord(encodeEvent(e));
    this.pending.push(rec);
    this.pendingBytes += rec.length;
    if (this.pendingBytes >= this.flushBytes || this.now() - this.lastFlush >= this.flushIntervalMs) this.flush();
  }

  /** Writes buffered records and fsyncs, so a crash after this loses nothing logged before it. */
  flush(): void {
    if (this.fd < 0) return;
    for (const rec of this.pending) {
      let off = 0;
      while (off < rec.length) off += writeSync(this.fd, rec, off, rec.length - off);
    }
    this.pending = [];
    this.pendingBytes = 0;
    fsyncSync(this.fd);
    this.lastFlush = this.now();
  }

  close(): void {
    if (this.fd < 0) return;
    this.flush();
    closeSync(this.fd);
    this.fd = -1;
  }
}
