/**
 * The project's tokenized shards: Arrow IPC *file* format (random access through the footer), one row per document.
 *
 * Columns: `tokens` List<Uint8|Uint16|Uint32> (the narrowest unsigned type that holds the vocabulary) and `crc32`
 * Uint32, the CRC-32 of the document's token bytes: Arrow validates its framing but not its values, and a flipped
 * byte inside a token buffer would otherwise train on wrong ids without a word.
 * Schema metadata: format, format_version, tokenizer_sha256, vocab_size, dtype, source_files (JSON array).
 *
 * The writer is arrowShardWriter.ts (re-exported here). The reader scans each shard once at open (validating framing, offsets and CRCs, and recording document lengths),
 * then reads one record batch at a time with a positioned read of the block the footer points to (a small LRU cache
 * keeps the last few), so memory is bounded by one shard at open and a few batches afterwards.
 */
import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { RecordBatch, RecordBatchReader, RecordBatchStreamWriter, Schema, Uint16, Uint32, Uint8, type Data, type List } from 'apache-arrow';
import { checkArrowIpc } from './arrowGuard.ts';
import { bytesOf, parseMetadata, type ShardDtype, type ShardMetadata, type TokenArray } from './arrowShardMetadata.ts';
import { FormatError } from '../errors.ts';

export { ArrowShardWriter, type ShardSummary, type ShardWriterOptions } from './arrowShardWriter.ts';
export { shardDtypeFor } from './arrowShardMetadata.ts';

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
