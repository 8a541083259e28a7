/**
 * Teacher-cache part files (Arrow IPC file format) and the folder that joins them: the writer of one part and the
 * reader of a whole cache. The columns are in src/cache/columns.ts, the fingerprint in src/cache/fingerprint.ts,
 * the part layout and manifest in src/cache/layout.ts.
 *
 * A part is written under a dot-prefixed temporary name, fsynced and renamed, so a file under a part name is
 * complete; the reader still checks each part's framing (ARROW1 at both ends, the footer, one record batch per block
 * of batch_samples samples) and its metadata against its name, and a folder is read only when its parts cover the
 * cache's sample range exactly once. Opening reads only the footers; a record batch is read (positioned read of the
 * block the footer points to) and decoded when a run first asks for one of its samples, and a few are kept.
 */
import { closeSync, fsyncSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync, writeSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { checkArrowFooter, checkArrowIpc } from './arrowGuard.ts';
import { AsyncByteQueue, RecordBatchFileWriter, RecordBatchReader, RecordBatchStreamWriter, Schema, type RecordBatch } from 'apache-arrow';
import { FormatError } from '../errors.ts';
import { tempSibling } from './atomicWrite.ts';
import { buildRecordBatch, cacheFields, decodeRecordBatch } from '../cache/columns.ts';
import {
  CacheIncompleteError,
  CacheMismatchError,
  cacheId,
  differences,
  fingerprintMetadata,
  parseFingerprint,
  type CacheFingerprint,
} from '../cache/fingerprint.ts';
import { coverage, describeRanges, MANIFEST_FILE, parsePartFileName, partFileName, readManifest, type ManifestPart, type PartRange } from '../cache/layout.ts';
import { concatRows, sliceRows } from '../cache/sparsify.ts';
import type { CacheRows } from '../cache/spec.ts';

const MAGIC = 'ARROW1';

/** Arrow's writer emits into an AsyncByteQueue; this one writes each chunk straight to a file descriptor. */
class FdSink extends AsyncByteQueue {
  bytes = 0;
  constructor(private readonly fd: number) {
    super();
  }
  override write(value: Uint8Array): void {
    let off = 0;
    while (off < value.byteLength) off += writeSync(this.fd, value, off, value.byteLength - off);
    this.bytes += value.byteLength;
  }
}

/** Writes one part: record batches of whole samples, in sample order, then `finish()` renames it into place. */
export class TeacherCachePartWriter {
  readonly path: string;
  private readonly tmp: string;
  private readonly fd: number;
  private readonly sink: FdSink;
  private readonly writer = new RecordBatchFileWriter();
  private readonly schema: Schema;
  private next: number;

  constructor(
    dir: string,
    private readonly fp: CacheFingerprint,
    private readonly range: PartRange,
  ) {
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, partFileName(range));
    this.tmp = tempSibling(this.path);
    const meta = fingerprintMetadata(fp);
    meta.set('part_start', String(range.start));
    meta.set('part_end', String(range.end));
    this.schema = new Schema(cacheFields(fp), meta);
    this.fd = openSync(this.tmp, 'w');
    this.sink = new FdSink(this.fd);
    this.writer.reset(this.sink, this.schema);
    this.next = range.start;
  }

  /** One record batch: samples [firstSample, firstSample + count), which must continue where the last one ended. */
  write(firstSample: number, count: number, rows: CacheRows): void {
    const expected = Math.min(this.fp.batchSamples, this.range.end - this.next);
    if (firstSample !== this.next || count !== expected) {
      throw new RangeError(`${this.path}: batch of samples [${firstSample}, ${firstSample + count}) where [${this.next}, ${this.next + expected}) was due`);
    }
    this.writer.write(buildRecordBatch(this.schema, this.fp, firstSample, count, rows));
    this.next += count;
  }

  /** Closes, fsyncs and renames the part into place; returns its size. */
  finish(): number {
    if (this.next !== this.range.end) throw new RangeError(`${this.path}: finished at sample ${this.next} of [${this.range.start}, ${this.range.end})`);
    this.writer.close();
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.tmp, this.path);
    return this.sink.bytes;
  }

  /** Drops the temporary file (an error or a stop mid-part): nothing under the part's name is left. */
  abort(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
    rmSync(this.tmp, { force: true });
  }
}

interface PartIndex extends ManifestPart {
  path: string;
  fp: CacheFingerprint;
  schemaBytes: Uint8Array;
  blocks: { offset: number; length: number }[];
}

function readAt(fd: number, file: string, pos: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, pos + got);
    if (n === 0) throw new FormatError(file, `short read at byte ${pos + got}: the part changed after it was opened. Re-open the cache.`);
    got += n;
  }
  return buf;
}

/** The IPC stream bytes of a schema message alone: a single batch read by position is decoded as [schema, batch]. */
function schemaMessage(schema: Schema): Uint8Array {
  const w = new RecordBatchStreamWriter();
  w.reset(undefined, schema);
  return w.toUint8Array(true).slice();
}

/** Opens one part from its footer alone, checking its framing and that its metadata agrees with its name. */
export function indexPart(dir: string, file: string): PartIndex {
  const path = join(dir, file);
  const claimed = parsePartFileName(file);
  if (!claimed) throw new FormatError(path, 'not a part file name');
  const fail = (detail: string): never => {
    throw new FormatError(path, `${detail}. This part is not complete: delete it and re-run cache-teacher with the same flags (it rewrites missing parts).`);
  };
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    if (size < 16) fail(`only ${size} bytes`);
    const text = (b: Uint8Array): string => Buffer.from(b).toString('latin1');
    const tail = readAt(fd, path, size - 10, 10);
    if (text(readAt(fd, path, 0, 6)) !== MAGIC || text(tail.subarray(4)) !== MAGIC) fail(`no "${MAGIC}" at both ends (a truncated or foreign file)`);
    const footerLength = new DataView(tail.buffer).getInt32(0, true);
    if (footerLength <= 0 || footerLength > size - 18) fail(`footer length ${footerLength} does not fit the file's ${size} bytes`);
    // The footer alone, framed as a tiny Arrow file, gives the schema and the record-batch blocks without the data.
    const footer = readAt(fd, path, size - 10 - footerLength, footerLength + 10);
    checkArrowFooter(path, footer.subarray(0, footerLength), size - 10 - footerLength, size - 10 - footerLength);
    const fake = new Uint8Array(8 + footer.length);
    fake.set(Buffer.from(MAGIC, 'latin1'), 0);
    fake.set(footer, 8);
    let reader: RecordBatchReader;
    try {
      reader = RecordBatchReader.from(fake);
      reader.open();
    } catch (e) {
      return fail(`cannot decode the footer (${(e as Error).message})`);
    }
    if (!reader.isFile() || !reader.footer) return fail('no Arrow file footer');
    const fp = parseFingerprint(path, reader.schema.metadata);
    const start = Number(reader.schema.metadata.get('part_start'));
    const end = Number(reader.schema.metadata.get('part_end'));
    if (start !== claimed.start || end !== claimed.end) fail(`metadata says samples [${start}, ${end}) but the name says [${claimed.start}, ${claimed.end})`);
    const blocks: PartIndex['blocks'] = [];
    const want = Math.ceil((end - start) / fp.batchSamples);
    if (reader.numRecordBatches !== want)
      fail(`${reader.numRecordBatches} record batches, expected ${want} (${end - start} samples, ${fp.batchSamples} per batch)`);
    for (let k = 0; k < reader.numRecordBatches; k++) {
      const b = reader.footer.getRecordBatch(k);
      if (!b) return fail(`record batch ${k} missing from the footer`);
      const length = b.metaDataLength + Number(b.bodyLength);
      if (b.offset < 8 || b.offset + length > size - 10 - footerLength) fail(`record batch ${k} at byte ${b.offset} (+${length}) lies outside the data`);
      blocks.push({ offset: Number(b.offset), length });
    }
    return { file, path, start, end, bytes: size, fp, schemaBytes: schemaMessage(reader.schema), blocks };
  } finally {
    closeSync(fd);
  }
}

/** What a cache folder holds: the complete parts, and temporaries left by interrupted writers. */
export function listParts(dir: string): { parts: PartIndex[]; temporaries: string[] } {
  if (!existsSync(dir)) return { parts: [], temporaries: [] };
  const names = readdirSync(dir).sort();
  const parts = names.filter((n) => parsePartFileName(n)).map((n) => indexPart(dir, n));
  const temporaries = names.filter((n) => n.startsWith('.part-') && n.includes('.tmp-'));
  return { parts, temporaries };
}

/** Refuses parts of different caches in one folder, naming what differs. */
export function checkSameCache(dir: string, parts: PartIndex[], expected?: CacheFingerprint): void {
  const ref = expected ?? parts[0]?.fp;
  if (!ref) return;
  for (const p of parts) {
    const d = differences(p.fp, ref);
    if (d.parts.length > 0) {
      throw new CacheMismatchError(
        d.parts,
        `${p.path} belongs to another cache than ${expected ? 'the one being written' : parts[0].path} (${d.lines.join('; ')}). ` +
          `Write this cache to another --out folder, or delete ${dir} to start over.`,
      );
    }
  }
}

/** A complete teacher cache, read by global sample index. */
export class TeacherCache {
  readonly fingerprint: CacheFingerprint;
  readonly id: string;
  readonly parts: readonly ManifestPart[];
  private readonly index: PartIndex[];
  private readonly fds = new Map<string, number>();
  private readonly decoded = new Map<string, CacheRows>();

  private constructor(
    readonly dir: string,
    parts: PartIndex[],
    private readonly keepBatches: number,
  ) {
    this.index = [...parts].sort((a, b) => a.start - b.start);
    this.fingerprint = this.index[0].fp;
    this.id = cacheId(this.fingerprint);
    this.parts = this.index.map(({ file, start, end, bytes }) => ({ file, start, end, bytes }));
  }

  /** Opens `dir`, refusing it unless its parts tile the cache's sample range exactly once (and match its manifest). */
  static open(dir: string, opts: { keepBatches?: number } = {}): TeacherCache {
    if (!existsSync(dir) || !statSync(dir).isDirectory())
      throw new CacheIncompleteError(`--teacher_cache ${dir}: no such folder. Make one with \`distill cache-teacher --out ${dir}\`.`);
    const { parts, temporaries } = listParts(dir);
    const leftovers =
      temporaries.length > 0
        ? ` (${temporaries.length} temporary file(s) of interrupted writers are there, e.g. ${temporaries[0]}: those parts were never completed)`
        : '';
    if (parts.length === 0) throw new CacheIncompleteError(`${dir}: no complete part files${leftovers}. Run \`distill cache-teacher --out ${dir}\`.`);
    checkSameCache(dir, parts);
    const fp = parts[0].fp;
    const { missing, overlaps } = coverage(parts, fp.sampleStart, fp.sampleEnd);
    if (overlaps.length > 0)
      throw new CacheIncompleteError(
        `${dir}: samples ${describeRanges(overlaps)} are in more than one part; parts of two layouts are mixed. Delete the folder and re-run cache-teacher.`,
      );
    if (missing.length > 0) {
      throw new CacheIncompleteError(
        `${dir}: the cache is incomplete: samples ${describeRanges(missing)} of [${fp.sampleStart}, ${fp.sampleEnd}) have no part${leftovers}. ` +
          'Re-run the cache-teacher job(s) with the same flags: each writes only its missing parts.',
      );
    }
    const manifestPath = join(dir, MANIFEST_FILE);
    if (existsSync(manifestPath)) {
      const m = readManifest(manifestPath);
      const files = new Map(parts.map((p) => [p.file, p.bytes]));
      const bad = m.parts.filter((p) => files.get(p.file) !== p.bytes);
      if (m.cache_id !== cacheId(fp) || bad.length > 0 || m.parts.length !== parts.length) {
        throw new CacheIncompleteError(
          `${manifestPath} does not describe the parts in ${dir} (${bad.length > 0 ? `${bad[0].file} is missing or has another size` : 'another cache or part list'}). ` +
            `Run \`distill cache-teacher --out ${dir} --merge\` to rewrite it.`,
        );
      }
    }
    return new TeacherCache(dir, parts, opts.keepBatches ?? 8);
  }

  /** The rows of `samples`, seq_length positions each, in the order given. */
  rowsOf(samples: readonly number[]): CacheRows {
    return concatRows(samples.map((s) => this.sampleRows(s)));
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
    this.decoded.clear();
  }

  private sampleRows(s: number): CacheRows {
    const fp = this.fingerprint;
    if (!Number.isInteger(s) || s < fp.sampleStart || s >= fp.sampleEnd) {
      throw new RangeError(`${this.dir}: sample ${s} is outside the cached range [${fp.sampleStart}, ${fp.sampleEnd})`);
    }
    let lo = 0;
    let hi = this.index.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.index[mid].start <= s) lo = mid;
      else hi = mid - 1;
    }
    const part = this.index[lo];
    const k = Math.floor((s - part.start) / fp.batchSamples);
    const first = part.start + k * fp.batchSamples;
    const rows = this.batch(part, k, first, Math.min(fp.batchSamples, part.end - first));
    const r = (s - first) * fp.seqLength;
    return sliceRows(rows, r, r + fp.seqLength);
  }

  private batch(part: PartIndex, k: number, first: number, count: number): CacheRows {
    const key = `${part.file}#${k}`;
    const hit = this.decoded.get(key);
    if (hit) {
      this.decoded.delete(key); // re-insert: Map order is the LRU order
      this.decoded.set(key, hit);
      return hit;
    }
    let fd = this.fds.get(part.file);
    if (fd === undefined) {
      fd = openSync(part.path, 'r');
      this.fds.set(part.file, fd);
    }
    const block = part.blocks[k];
    const bytes = new Uint8Array(part.schemaBytes.length + block.length);
    bytes.set(part.schemaBytes, 0);
    bytes.set(readAt(fd, part.path, block.offset, block.length), part.schemaBytes.length);
    let batch: RecordBatch | undefined;
    checkArrowIpc(part.path, bytes);
    try {
      const reader = RecordBatchReader.from(bytes);
      reader.open();
      batch = reader.next().value as RecordBatch | undefined;
    } catch (e) {
      throw new FormatError(
        part.path,
        `cannot decode the record batch at byte ${block.offset} (${(e as Error).message}). The part is corrupt: delete it and re-run cache-teacher.`,
      );
    }
    if (!batch) throw new FormatError(part.path, `no record batch at byte ${block.offset}. The part is corrupt: delete it and re-run cache-teacher.`);
    const rows = decodeRecordBatch(part.path, block.offset, batch, part.fp, first, count);
    this.decoded.set(key, rows);
    if (this.decoded.size > this.keepBatches) this.decoded.delete(this.decoded.keys().next().value as string);
    return rows;
  }
}
