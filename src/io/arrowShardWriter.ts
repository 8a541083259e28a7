/**
 * The writer of the project's tokenized shards (the format: arrowShards.ts). It streams: a record batch is flushed
 * every `batchTokens` tokens and a shard file is closed every `shardTokens` tokens, each shard written under a
 * temporary name and renamed when complete, so memory stays bounded by one batch and a crash never leaves a half
 * shard under a real name.
 */
import { closeSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, writeSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { AsyncByteQueue, Field, List, makeData, RecordBatch, RecordBatchFileWriter, Schema, Struct, Uint16, Uint32, Uint8 } from 'apache-arrow';
import { bytesOf, SHARD_FORMAT, SHARD_FORMAT_VERSION, shardDtypeFor, type ShardDtype, type TokenArray } from './arrowShardMetadata.ts';
import { tempSibling, writeFileAtomic } from './atomicWrite.ts';

function arrowType(dtype: ShardDtype): Uint8 | Uint16 | Uint32 {
  return dtype === 'uint8' ? new Uint8() : dtype === 'uint16' ? new Uint16() : new Uint32();
}
function allocTokens(dtype: ShardDtype, n: number): TokenArray {
  return dtype === 'uint8' ? new Uint8Array(n) : dtype === 'uint16' ? new Uint16Array(n) : new Uint32Array(n);
}

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
