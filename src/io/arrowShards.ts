/**
 * The project's tokenized shards: Arrow IPC *file* format (random access through the footer), one row per document.
 *
 * Columns: `tokens` List<Uint8|Uint16|Uint32> (the narrowest unsigned type that holds the vocabulary) and `crc32`
 * Uint32, the CRC-32 of the document's token bytes: Arrow validates its framing but not its values, and a flipped
 * byte inside a token buffer would otherwise train on wrong ids without a word.
 * Schema metadata: format, format_version, tokenizer_sha256, vocab_size, dtype, source_files (JSON array).
 *
 * The writer streams: a record batch is flushed every `batchTokens` tokens and a shard file is closed every
 * `shardTokens` tokens, each shard written under a temporary name and renamed when complete, so memory stays bounded
 * by one batch and a crash never leaves a half shard under a real name.
 * The reader scans each shard once at open (validating framing, offsets and CRCs, and recording document lengths),
 * then reads one record batch at a time with a positioned read of the block the footer points to (a small LRU cache
 * keeps the last few), so memory is bounded by one shard at open and a few batches afterwards.
 */
import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { crc32 } from 'node:zlib';
import {
  AsyncByteQueue,
  Field,
  List,
  makeData,
  RecordBatch,
  RecordBatchFileWriter,
  RecordBatchReader,
  RecordBatchStreamWriter,
  Schema,
  Struct,
  Uint16,
  Uint32,
  Uint8,
  type Data,
} from 'apache-arrow';
import { checkArrowIpc } from './arrowGuard.ts';
import { parseMetadata, SHARD_FORMAT, SHARD_FORMAT_VERSION, type ShardDtype, type ShardMetadata } from './arrowShardMetadata.ts';
import { FormatError } from '../errors.ts';
import { tempSibling, writeFileAtomic } from './atomicWrite.ts';

type TokenArray = Uint8Array | Uint16Array | Uint32Array;

/** The narrowest unsigned dtype that holds ids 0..vocabSize-1. */
export function shardDtypeFor(vocabSize: number): ShardDtype {
  return vocabSize <= 256 ? 'uint8' : vocabSize <= 65536 ? 'uint16' : 'uint32';
}

function arrowType(dtype: ShardDtype): Uint8 | Uint16 | Uint32 {
  return dtype === 'uint8' ? new Uint8() : dtype === 'uint16' ? new Uint16() : new Uint32();
}
function allocTokens(dtype: ShardDtype, n: number): TokenArray {
  return dtype === 'uint8' ? new Uint8Array(n) : dtype === 'uint16' ? new Uint16Array(n) : new Uint32Array(n);
}
const bytesOf = (a: TokenArray): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Arrow's writer emits into an AsyncByteQueue; this one writes each chunk straight to a file descriptor instead. */
class FdSink extends AsyncByteQueue {
  constructor(private readonly fd: number) {
    super();
  }
  override write(value: Uint8Array): void {
    let off = 0;
    while (off < value.byteLength) off += writeSync(this.fd, value, off, value.byteLength - off);
  }
}

export interface ShardWriterOptions {
  outDir: string;
  tokenizerSha256: string;
  vocabSize: number;
  sourceFiles: string[];
  /** Flush a record batch once this many tokens are pending (default 1Mi). */
  batchTokens?: number;
  /** Close the shard file once it holds this many tokens (default 64Mi). */
  shardTokens?: number;
}

export interface ShardSummary {
  shards: string[];
  documents: number;
  tokens: number;
}

export class ArrowShardWriter {
  readonly dtype: ShardDtype;
  private readonly schema: Schema;
  private readonly batchTokens: number;
  private readonly shardTokens: number;
  private pending: TokenArray;
  private pendingTokens = 0;
  private pendingOffsets: number[] = [0];
  private pendingCrcs: number[] = [];
  private shard: { fd: number; tmp: string; path: string; writer: RecordBatchFileWriter; tokens: number } | null = null;
  private readonly written: string[] = [];
  private documents = 0;
  private tokens = 0;

  constructor(private readonly opts: ShardWriterOptions) {
    this.dtype = shardDtypeFor(opts.vocabSize);
    this.batchTokens = opts.batchTokens ?? 1 << 20;
    this.shardTokens = opts.shardTokens ?? 1 << 26;
    this.pending = allocTokens(this.dtype, Math.max(1024, Math.min(this.batchTokens, 1 << 16)));
    const listType = new List(new Field('item', arrowType(this.dtype), false));
    const metadata = new Map<string, string>([
      ['format', SHARD_FORMAT],
      ['format_version', SHARD_FORMAT_VERSION],
      ['tokenizer_sha256', opts.tokenizerSha256],
      ['vocab_size', String(opts.vocabSize)],
      ['dtype', this.dtype],
      ['source_files', JSON.stringify(opts.sourceFiles)],
    ]);
    this.schema = new Schema([new Field('tokens', listType, false), new Field('crc32', new Uint32(), false)], metadata);
    mkdirSync(opts.outDir, { recursive: true });
  }

  addDocument(tokens: ArrayLike<number>): void {
    for (let k = 0; k < tokens.length; k++) {
      const t = tokens[k];
      if (!Number.isInteger(t) || t < 0 || t >= this.opts.vocabSize) {
        throw new RangeError(
          `document ${this.documents}: token ${k} is ${t}, outside the vocabulary [0, ${this.opts.vocabSize}); the tokenizer and --vocab_size disagree`,
        );
      }
    }
    if (this.pendingTokens + tokens.length > this.pending.length) {
      let cap = this.pending.length;
      while (cap < this.pendingTokens + tokens.length) cap *= 2;
      const grown = allocTokens(this.dtype, cap);
      grown.set(this.pending.subarray(0, this.pendingTokens));
      this.pending = grown;
    }
    const view = this.pending.subarray(this.pendingTokens, this.pendingTokens + tokens.length);
    view.set(tokens);
    this.pendingCrcs.push(crc32(bytesOf(view)) >>> 0);
    this.pendingTokens += tokens.length;
    this.pendingOffsets.push(this.pendingTokens);
    this.documents++;
    this.tokens += tokens.length;
    if (this.pendingTokens >= this.batchTokens) this.flushBatch();
  }

  /** Flushes and closes everything; removes shard files of an older run left in outDir; writes manifest.json. */
  finish(): ShardSummary {
    this.flushBatch();
    this.closeShard();
    const keep = new Set(this.written.map((p) => basename(p)));
    for (const f of readdirSync(this.opts.outDir)) {
      if (/^shard-\d+\.arrow$/.test(f) && !keep.has(f)) rmSync(join(this.opts.outDir, f));
    }
    const summary: ShardSummary = { shards: this.written, documents: this.documents, tokens: this.tokens };
    writeFileAtomic(
      join(this.opts.outDir, 'manifest.json'),
      JSON.stringify(
        {
          format: SHARD_FORMAT,
          format_version: SHARD_FORMAT_VERSION,
          tokenizer_sha256: this.opts.tokenizerSha256,
          vocab_size: this.opts.vocabSize,
          dtype: this.dtype,
          source_files: this.opts.sourceFiles,
          shards: this.written.map((p) => basename(p)),
          documents: this.documents,
          tokens: this.tokens,
        },
        null,
        2,
      ) + '\n',
    );
    return summary;
  }

  /** Closes the open shard without renaming it into place and deletes it (on error). */
  abort(): void {
    if (!this.shard) return;
    closeSync(this.shard.fd);
    rmSync(this.shard.tmp, { force: true });
    this.shard = null;
  }

  private flushBatch(): void {
    const nDocs = this.pendingOffsets.length - 1;
    if (nDocs === 0) return;
    const type = arrowType(this.dtype);
    const values = makeData({ type, length: this.pendingTokens, nullCount: 0, data: this.pending.slice(0, this.pendingTokens) });
    const listType = this.schema.fields[0].type as List<Uint8 | Uint16 | Uint32>;
    const list = makeData({ type: listType, length: nDocs, nullCount: 0, valueOffsets: Int32Array.from(this.pendingOffsets), child: values });
    const crcs = makeData({ type: new Uint32(), length: nDocs, nullCount: 0, data: Uint32Array.from(this.pendingCrcs) });
    const struct = makeData({ type: new Struct(this.schema.fields), length: nDocs, nullCount: 0, children: [list, crcs] });
    if (!this.shard) this.openShard();
    const shard = this.shard as NonNullable<typeof this.shard>;
    shard.writer.write(new RecordBatch(this.schema, struct));
    shard.tokens += this.pendingTokens;
    this.pendingTokens = 0;
    this.pendingOffsets = [0];
    this.pendingCrcs = [];
    if (shard.tokens >= this.shardTokens) this.closeShard();
  }

  private openShard(): void {
    const path = join(this.opts.outDir, `shard-${String(this.written.length).padStart(5, '0')}.arrow`);
    const tmp = tempSibling(path);
    const fd = openSync(tmp, 'w');
    const writer = new RecordBatchFileWriter();
    writer.reset(new FdSink(fd), this.schema);
    this.shard = { fd, tmp, path, writer, tokens: 0 };
  }

  private closeShard(): void {
    const s = this.shard;
    if (!s) return;
    s.writer.close(); // writes the footer through the sink
    fsyncSync(s.fd);
    closeSync(s.fd);
    renameSync(s.tmp, s.path);
    this.written.push(s.path);
    this.shard = null;
  }
}

interface BatchLoc {
  shard: number;
  offset: number;
  length: number;
  firstDoc: number;
}

interface LoadedBatch {
  offsets: Int32Array;
  values: TokenArray;
  crcs: Uint32Array;
}

/** Random access to the documents of one .arrow shard or of a directory of shards. */
export class ArrowShardDataset {
  readonly files: string[];
  readonly metadata: ShardMetadata;
  readonly numDocuments: number;
  readonly numTokens: number;
  private readonly lengths: Int32Array;
  private readonly batches: BatchLoc[] = [];
  private readonly schemaBytes: Uint8Array[] = [];
  private readonly cache = new Map<number, LoadedBatch>();
  private readonly fds: (number | null)[] = [];

  constructor(
    readonly path: string,
    private readonly cacheBatches = 4,
  ) {
    this.files = statSync(path).isDirectory()
      ? readdirSync(path)
          .filter((f) => f.endsWith('.arrow') && !f.startsWith('.'))
          .sort()
          .map((f) => join(path, f))
      : [path];
    if (this.files.length === 0) throw new FormatError(path, 'no .arrow shard files in this directory. Run `distill prepare --out DIR` to make them.');
    const lengths: number[] = [];
    let meta: ShardMetadata | null = null;
    let tokens = 0;
    this.files.forEach((file, si) => {
      const m = this.scanShard(file, si, lengths);
      tokens += m.tokens;
      if (meta && (meta.tokenizerSha256 !== m.meta.tokenizerSha256 || meta.vocabSize !== m.meta.vocabSize)) {
        throw new FormatError(
          file,
          `tokenizer ${m.meta.tokenizerSha256.slice(0, 12)}/vocab ${m.meta.vocabSize} differs from ${this.files[0]} (${meta.tokenizerSha256.slice(0, 12)}/vocab ${meta.vocabSize}). Shards of one dataset must come from one tokenizer; re-run prepare.`,
        );
      }
      meta ??= m.meta;
    });
    this.metadata = meta as unknown as ShardMetadata;
    this.lengths = Int32Array.from(lengths);
    this.numDocuments = lengths.length;
    this.numTokens = tokens;
    this.fds = this.files.map(() => null);
  }

  documentLength(i: number): number {
    this.check(i);
    return this.lengths[i];
  }

  document(i: number): Int32Array {
    this.check(i);
    let lo = 0;
    let hi = this.batches.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.batches[mid].firstDoc <= i) lo = mid;
      else hi = mid - 1;
    }
    const b = this.loadBatch(lo);
    const row = i - this.batches[lo].firstDoc;
    const tokens = b.values.subarray(b.offsets[row], b.offsets[row + 1]);
    if (crc32(bytesOf(tokens)) >>> 0 !== b.crcs[row]) {
      const file = this.files[this.batches[lo].shard];
      throw new FormatError(
        file,
        `document ${i} (batch at byte ${this.batches[lo].offset}, row ${row}): token bytes fail their CRC-32 (found ${crc32(bytesOf(tokens)) >>> 0}, expected ${b.crcs[row]}). The shard is corrupt; re-run prepare.`,
      );
    }
    return Int32Array.from(tokens);
  }

  documentSequences(i: number): Int32Array[] {
    return [this.document(i)];
  }

  close(): void {
    for (const fd of this.fds) if (fd !== null) closeSync(fd);
    this.fds.fill(null);
    this.cache.clear();
  }

  private check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.numDocuments) throw new RangeError(`${this.path}: document ${i} out of range [0, ${this.numDocuments})`);
  }

  private scanShard(file: string, si: number, lengths: number[]): { meta: ShardMetadata; tokens: number } {
    const buf = readFileSync(file);
    const magic = 'ARROW1';
    if (buf.length < 16 || buf.toString('latin1', 0, 6) !== magic || buf.toString('latin1', buf.length - 6) !== magic) {
      throw new FormatError(
        file,
        `not an Arrow IPC file at byte ${buf.toString('latin1', 0, 6) !== magic ? 0 : buf.length - 6}: found ${JSON.stringify(buf.toString('latin1', 0, 6))}…${JSON.stringify(buf.toString('latin1', Math.max(0, buf.length - 6)))}, expected "ARROW1" at both ends. The shard is truncated or not a shard; re-run prepare.`,
      );
    }
    let tokens = 0;
    let meta: ShardMetadata;
    // apache-arrow trusts the metadata's lengths; bound them first (a flipped length ran it out of memory).
    checkArrowIpc(file, buf);
    try {
      const reader = RecordBatchReader.from(buf);
      reader.open();
      const footer = reader.footer;
      if (!reader.isFile() || !footer) throw new Error('no file footer');
      meta = parseMetadata(file, reader.schema);
      this.schemaBytes[si] = schemaMessage(reader.schema);
      for (let k = 0; k < reader.numRecordBatches; k++) {
        const block = footer.getRecordBatch(k);
        const batch = reader.readRecordBatch(k);
        if (!block || !batch) throw new Error(`record batch ${k} missing`);
        const loc: BatchLoc = { shard: si, offset: block.offset, length: block.metaDataLength + block.bodyLength, firstDoc: lengths.length };
        const b = extractBatch(file, batch, loc.offset, meta.dtype);
        for (let r = 0; r + 1 < b.offsets.length; r++) {
          const t = b.values.subarray(b.offsets[r], b.offsets[r + 1]);
          if (crc32(bytesOf(t)) >>> 0 !== b.crcs[r]) {
            throw new FormatError(
              file,
              `document ${lengths.length} (batch ${k} at byte ${block.offset}, row ${r}): token bytes fail their CRC-32 (found ${crc32(bytesOf(t)) >>> 0}, expected ${b.crcs[r]}). The shard is corrupt; re-run prepare.`,
            );
          }
          lengths.push(t.length);
          tokens += t.length;
        }
        this.batches.push(loc);
      }
    } catch (e) {
      if (e instanceof FormatError) throw e;
      throw new FormatError(file, `cannot decode the Arrow IPC file (${(e as Error).message}). The shard is corrupt or truncated; re-run prepare.`);
    }
    return { meta, tokens };
  }

  private loadBatch(bi: number): LoadedBatch {
    const hit = this.cache.get(bi);
    if (hit) {
      this.cache.delete(bi); // re-insert: Map order is the LRU order
      this.cache.set(bi, hit);
      return hit;
    }
    const loc = this.batches[bi];
    const file = this.files[loc.shard];
    let fd = this.fds[loc.shard];
    if (fd === null) fd = this.fds[loc.shard] = openSync(file, 'r');
    // A stream of [schema message, this batch's message] decodes one batch without reading the rest of the file.
    const schema = this.schemaBytes[loc.shard];
    const bytes = new Uint8Array(schema.length + loc.length);
    bytes.set(schema, 0);
    let got = 0;
    while (got < loc.length) {
      const n = readSync(fd, bytes, schema.length + got, loc.length - got, loc.offset + got);
      if (n === 0) throw new FormatError(file, `short read at byte ${loc.offset + got}: the shard shrank after it was opened; re-run prepare.`);
      got += n;
    }
    let loaded: LoadedBatch;
    checkArrowIpc(file, bytes);
    try {
      const reader = RecordBatchReader.from(bytes);
      reader.open();
      const batch = reader.next().value as RecordBatch | undefined;
      if (!batch) throw new Error('no record batch');
      loaded = extractBatch(file, batch, loc.offset, this.metadata.dtype);
    } catch (e) {
      if (e instanceof FormatError) throw e;
      throw new FormatError(
        file,
        `cannot decode the record batch at byte ${loc.offset} (${(e as Error).message}). The shard changed or is corrupt; re-run prepare.`,
      );
    }
    this.cache.set(bi, loaded);
    if (this.cache.size > this.cacheBatches) this.cache.delete(this.cache.keys().next().value as number);
    return loaded;
  }
}

/**
 * The IPC stream bytes of a schema message alone. Arrow JS's file writer keeps the schema only in the footer, so a
 * single batch read by position is decoded as the stream [this message, the batch's message].
 */
function schemaMessage(schema: Schema): Uint8Array {
  const w = new RecordBatchStreamWriter();
  w.reset(undefined, schema);
  return w.toUint8Array(true).slice();
}

function extractBatch(file: string, batch: RecordBatch, at: number, dtype: ShardDtype): LoadedBatch {
  const tokensCol = batch.getChildAt(0);
  const crcCol = batch.getChildAt(1);
  if (!tokensCol || !crcCol || tokensCol.data.length !== 1 || crcCol.data.length !== 1) {
    throw new FormatError(file, `record batch at byte ${at}: expected columns tokens and crc32; re-run prepare.`);
  }
  const list = tokensCol.data[0] as Data<List<Uint8 | Uint16 | Uint32>>;
  const child = list.children[0];
  const values = child?.values as TokenArray | undefined;
  const want = dtype === 'uint8' ? Uint8Array : dtype === 'uint16' ? Uint16Array : Uint32Array;
  if (!(values instanceof want)) {
    throw new FormatError(file, `record batch at byte ${at}: token values are ${values?.constructor.name}, expected ${want.name} (metadata dtype ${dtype}).`);
  }
  const offsets = list.valueOffsets.subarray(list.offset, list.offset + list.length + 1);
  for (let r = 0; r < list.length; r++) {
    if (offsets[r] > offsets[r + 1] || offsets[r] < 0 || offsets[r + 1] > values.length) {
      throw new FormatError(
        file,
        `record batch at byte ${at}, row ${r}: list offsets [${offsets[r]}, ${offsets[r + 1]}) are not within the ${values.length} token values. The shard is corrupt; re-run prepare.`,
      );
    }
  }
  const crcs = (crcCol.data[0].values as Uint32Array).subarray(0, list.length);
  return { offsets, values, crcs };
}
