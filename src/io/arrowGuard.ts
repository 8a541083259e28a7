/**
 * Bounds-checks an Arrow IPC buffer (file or stream format) before apache-arrow decodes it. apache-arrow trusts the
 * lengths written in the flatbuffer metadata: four flipped bytes in a schema's vector length made it allocate until
 * the process ran out of memory. Here every message is walked with the flatbuffer accessors, and every vector
 * length, body length, buffer range and block range is compared with the bytes that are actually there, so a
 * corrupted file becomes a FormatError naming the byte offset.
 */
import { ByteBuffer } from 'flatbuffers';
import { Message } from 'apache-arrow/fb/message';
import { MessageHeader } from 'apache-arrow/fb/message-header';
import { Schema } from 'apache-arrow/fb/schema';
import { Field } from 'apache-arrow/fb/field';
import { RecordBatch } from 'apache-arrow/fb/record-batch';
import { DictionaryBatch } from 'apache-arrow/fb/dictionary-batch';
import { Footer } from 'apache-arrow/fb/footer';
import { FormatError } from '../errors.ts';

const MAGIC = 'ARROW1';
/** Deeper nesting than this is no token or cache schema; it also bounds the recursion. */
const MAX_FIELD_DEPTH = 32;

class Check {
  constructor(
    readonly file: string,
    readonly base: number,
  ) {}

  fail(at: number, what: string): never {
    throw new FormatError(this.file, `Arrow metadata at byte ${this.base + at}: ${what}; the file is corrupted or not an Arrow IPC file`);
  }

  /** A vector of `n` elements of at least `size` bytes each must fit in the flatbuffer. */
  vector(bb: ByteBuffer, n: number, size: number, what: string): void {
    if (!Number.isInteger(n) || n < 0 || n * size > bb.capacity()) this.fail(0, `${what} claims ${n} entries in a ${bb.capacity()}-byte block`);
  }
}

function checkField(c: Check, bb: ByteBuffer, f: Field, depth: number): void {
  if (depth > MAX_FIELD_DEPTH) c.fail(0, `fields nested deeper than ${MAX_FIELD_DEPTH}`);
  c.vector(bb, f.childrenLength(), 4, "a field's children");
  c.vector(bb, f.customMetadataLength(), 4, "a field's metadata");
  for (let i = 0; i < f.childrenLength(); i++) {
    const child = f.children(i);
    if (!child) c.fail(0, `field child ${i} is missing`);
    checkField(c, bb, child, depth + 1);
  }
}

function checkSchema(c: Check, bb: ByteBuffer, s: Schema): void {
  c.vector(bb, s.fieldsLength(), 4, "the schema's fields");
  c.vector(bb, s.customMetadataLength(), 4, "the schema's metadata");
  c.vector(bb, s.featuresLength(), 8, "the schema's features");
  for (let i = 0; i < s.fieldsLength(); i++) {
    const f = s.fields(i);
    if (!f) c.fail(0, `schema field ${i} is missing`);
    checkField(c, bb, f, 0);
  }
}

function checkRecordBatch(c: Check, bb: ByteBuffer, rb: RecordBatch, bodyLength: number): void {
  c.vector(bb, rb.nodesLength(), 16, "a record batch's field nodes");
  c.vector(bb, rb.buffersLength(), 16, "a record batch's buffers");
  c.vector(bb, rb.variadicBufferCountsLength(), 8, "a record batch's variadic counts");
  // A field node's length counts values; no column can hold more values than its body has bits.
  const maxValues = BigInt(bodyLength) * 8n + 64n;
  if (rb.length() < 0n || rb.length() > maxValues) c.fail(0, `a record batch claims ${rb.length()} rows for a ${bodyLength}-byte body`);
  for (let i = 0; i < rb.nodesLength(); i++) {
    const n = rb.nodes(i)!;
    if (n.length() < 0n || n.length() > maxValues || n.nullCount() < 0n || n.nullCount() > n.length()) {
      c.fail(0, `field node ${i} claims ${n.length()} values (${n.nullCount()} null) for a ${bodyLength}-byte body`);
    }
  }
  for (let i = 0; i < rb.buffersLength(); i++) {
    const b = rb.buffers(i)!;
    if (b.offset() < 0n || b.length() < 0n || b.offset() + b.length() > BigInt(bodyLength)) {
      c.fail(0, `buffer ${i} spans [${b.offset()}, ${b.offset() + b.length()}) of a ${bodyLength}-byte body`);
    }
  }
}

/** Walks the framed messages from `at`; returns where the walk ended (the end-of-stream marker or the data's end). */
function walkMessages(file: string, bytes: Uint8Array, at: number, end: number): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  while (at + 8 <= end) {
    let metaLen = dv.getInt32(at, true);
    let start = at + 4;
    if (metaLen === -1) {
      metaLen = dv.getInt32(at + 4, true);
      start = at + 8;
    }
    if (metaLen === 0) return;
    const c = new Check(file, start);
    if (metaLen < 0 || start + metaLen > end) c.fail(-4, `a message claims ${metaLen} metadata bytes with ${end - start} left`);
    const bb = new ByteBuffer(bytes.subarray(start, start + metaLen));
    const m = Message.getRootAsMessage(bb);
    const body = m.bodyLength();
    if (body < 0n || BigInt(start + metaLen) + body > BigInt(end)) c.fail(0, `a message claims a ${body}-byte body with ${end - start - metaLen} bytes left`);
    c.vector(bb, m.customMetadataLength(), 4, "a message's metadata");
    const type = m.headerType();
    if (type === MessageHeader.Schema) checkSchema(c, bb, m.header(new Schema())!);
    else if (type === MessageHeader.RecordBatch) checkRecordBatch(c, bb, m.header(new RecordBatch())!, Number(body));
    else if (type === MessageHeader.DictionaryBatch) {
      const d = m.header(new DictionaryBatch())!;
      const rb = d.data();
      if (rb) checkRecordBatch(c, bb, rb, Number(body));
    } else c.fail(0, `unknown message type ${type}`);
    at = start + metaLen + Number(body);
  }
}

/** Throws a FormatError naming the byte when `bytes` (an Arrow IPC file or stream) has out-of-bounds metadata. */
export function checkArrowIpc(file: string, bytes: Uint8Array): void {
  const text = (a: number, b: number): string => Buffer.from(bytes.subarray(a, b)).toString('latin1');
  const isFile = bytes.length >= 12 && text(0, 6) === MAGIC;
  if (!isFile) {
    walkMessages(file, bytes, 0, bytes.length);
    return;
  }
  if (text(bytes.length - 6, bytes.length) !== MAGIC) {
    throw new FormatError(file, `starts like an Arrow file but does not end with "${MAGIC}": the file is truncated`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const footerLen = dv.getInt32(bytes.length - 10, true);
  const footerStart = bytes.length - 10 - footerLen;
  if (footerLen <= 0 || footerStart < 8) new Check(file, bytes.length - 10).fail(0, `the footer claims ${footerLen} bytes in a ${bytes.length}-byte file`);
  checkArrowFooter(file, bytes.subarray(footerStart, footerStart + footerLen), footerStart, footerStart);
  walkMessages(file, bytes, 8, footerStart);
}

/**
 * Checks a file footer (the flatbuffer between the data and the trailing length and magic) on its own: its schema,
 * and that every block lies within [8, dataEnd). `at` is the footer's byte offset in the file, for messages.
 */
export function checkArrowFooter(file: string, footerBytes: Uint8Array, dataEnd: number, at: number): void {
  const c = new Check(file, at);
  const bb = new ByteBuffer(footerBytes);
  const footer = Footer.getRootAsFooter(bb);
  const schema = footer.schema();
  if (!schema) return c.fail(0, 'the footer has no schema');
  checkSchema(c, bb, schema);
  c.vector(bb, footer.recordBatchesLength(), 24, "the footer's record batch blocks");
  c.vector(bb, footer.dictionariesLength(), 24, "the footer's dictionary blocks");
  const blocks = [
    ...Array.from({ length: footer.recordBatchesLength() }, (_, i) => footer.recordBatches(i)!),
    ...Array.from({ length: footer.dictionariesLength() }, (_, i) => footer.dictionaries(i)!),
  ];
  for (const b of blocks) {
    const endAt = b.offset() + BigInt(b.metaDataLength()) + b.bodyLength();
    if (b.offset() < 8n || b.metaDataLength() < 0 || b.bodyLength() < 0n || endAt > BigInt(dataEnd)) {
      c.fail(0, `a block spans [${b.offset()}, ${endAt}) beyond the data's ${dataEnd} bytes`);
    }
  }
}
