/**
 * The Arrow columns of a teacher-cache part: one row per token position, rows of a sample consecutive in position
 * order, a record batch per block of `batch_samples` samples.
 *
 *   sample          Uint32                      global training-sample index (the i of `distill run`'s sample(i))
 *   position        Uint16 (Uint32 if seq_length > 65536)   token position 0 … seq_length − 1 within the sample
 *   topk:   ids       FixedSizeList<ID>[K]      the teacher's K most probable next-token ids, most probable first
 *           logprobs  FixedSizeList<VAL>[K]     their log-probabilities log softmax(z / τ)
 *           ghost     Float32                   the mass outside the K ids, 1 − Σ_k p_k (the "ghost" bucket)
 *   sample: ids       List<ID>                  the distinct ids among N draws from p_t, increasing
 *           counts    List<Uint8|Uint16>        how many draws gave each id (Σ = N)
 *           logprobs  List<VAL>                 log p_t of those ids
 *   full:   logprobs  FixedSizeList<VAL>[V]     the whole log-softmax; entry j is id j
 *   uint8 values only: logprobs_min, logprobs_scale  Float32: logprob = min + q · scale (quantize.ts)
 *
 * ID is the narrowest of Uint8/Uint16/Uint32 that holds the vocabulary; VAL is Float32, Float16 or Uint8.
 */
import {
  Field,
  FixedSizeList,
  Float16,
  Float32,
  List,
  makeData,
  RecordBatch,
  Schema,
  Struct,
  Uint16,
  Uint32,
  Uint8,
  type Data,
  type DataType,
} from 'apache-arrow';
import { FormatError } from '../errors.ts';
import { shardDtypeFor } from '../io/arrowShards.ts';
import type { CacheFingerprint } from './fingerprint.ts';
import { decodeValues, encodeValues, uniformOffsets, type EncodedValues } from './quantize.ts';
import { fixedWidth, type CacheRows } from './spec.ts';

type UintArray = Uint8Array | Uint16Array | Uint32Array;
type UintType = Uint8 | Uint16 | Uint32;

const uintType = (maxValue: number): UintType => (maxValue < 256 ? new Uint8() : maxValue < 65536 ? new Uint16() : new Uint32());
const uintArray = (t: UintType, src: ArrayLike<number>): UintArray =>
  t instanceof Uint8 ? Uint8Array.from(src) : t instanceof Uint16 ? Uint16Array.from(src) : Uint32Array.from(src);

const idType = (fp: CacheFingerprint): UintType => uintType(fp.vocabSize - 1);
const positionType = (fp: CacheFingerprint): UintType => (fp.seqLength <= 65536 ? new Uint16() : new Uint32());
const countType = (fp: CacheFingerprint): UintType => uintType(fp.samples);
function valueType(fp: CacheFingerprint): DataType {
  return fp.valueDtype === 'float32' ? new Float32() : fp.valueDtype === 'float16' ? new Float16() : new Uint8();
}

/** The id dtype name, for messages and the README. */
export const idDtypeName = (vocabSize: number): string => shardDtypeFor(vocabSize);

/** The column fields of a cache with this fingerprint, in order. */
export function cacheFields(fp: CacheFingerprint): Field[] {
  const item = (t: DataType): Field => new Field('item', t, false);
  const list = (t: DataType): DataType => {
    const w = fixedWidth(fp, fp.vocabSize);
    return w === null ? new List(item(t)) : new FixedSizeList(w, item(t));
  };
  const fields: Field[] = [new Field('sample', new Uint32(), false), new Field('position', positionType(fp), false)];
  if (fp.method !== 'full') fields.push(new Field('ids', list(idType(fp)), false));
  if (fp.method === 'sample') fields.push(new Field('counts', list(countType(fp)), false));
  fields.push(new Field('logprobs', list(valueType(fp)), false));
  if (fp.method === 'topk') fields.push(new Field('ghost', new Float32(), false));
  if (fp.valueDtype === 'uint8') fields.push(new Field('logprobs_min', new Float32(), false), new Field('logprobs_scale', new Float32(), false));
  return fields;
}

/** One record batch: `rows` must hold seq_length positions for each of samples [firstSample, firstSample + count). */
export function buildRecordBatch(schema: Schema, fp: CacheFingerprint, firstSample: number, count: number, rows: CacheRows): RecordBatch {
  const n = count * fp.seqLength;
  if (rows.rows !== n) throw new RangeError(`cache batch at sample ${firstSample}: ${rows.rows} rows for ${count} samples of ${fp.seqLength} positions`);
  const sample = new Uint32Array(n);
  const position = new Array<number>(n);
  for (let r = 0; r < n; r++) {
    sample[r] = firstSample + Math.floor(r / fp.seqLength);
    position[r] = r % fp.seqLength;
  }
  const flat = (t: DataType, data: ArrayLike<number> | Uint16Array, length: number): Data => makeData({ type: t, length, nullCount: 0, data } as never);
  const width = fixedWidth(fp, fp.vocabSize);
  const listOf = (t: DataType, listType: DataType, values: ArrayLike<number>): Data => {
    const child = flat(t, values, values.length);
    const type = listType as FixedSizeList | List;
    return width === null
      ? makeData({ type: type as List, length: n, nullCount: 0, valueOffsets: rows.offsets, child })
      : makeData({ type: type as FixedSizeList, length: n, nullCount: 0, child });
  };
  const encoded = encodeValues(rows.logProbs, rows.offsets, fp.valueDtype);
  const children: Data[] = [];
  for (const f of schema.fields) {
    switch (f.name) {
      case 'sample':
        children.push(flat(new Uint32(), sample, n));
        break;
      case 'position': {
        const t = f.type as UintType;
        children.push(flat(t, uintArray(t, position), n));
        break;
      }
      case 'ids': {
        const t = idType(fp);
        children.push(listOf(t, f.type, uintArray(t, rows.ids as Int32Array)));
        break;
      }
      case 'counts': {
        const t = countType(fp);
        children.push(listOf(t, f.type, uintArray(t, rows.counts as Int32Array)));
        break;
      }
      case 'logprobs':
        children.push(listOf(valueType(fp), f.type, encoded.data));
        break;
      case 'ghost':
        children.push(flat(new Float32(), rows.ghost as Float32Array, n));
        break;
      case 'logprobs_min':
        children.push(flat(new Float32(), encoded.min as Float32Array, n));
        break;
      case 'logprobs_scale':
        children.push(flat(new Float32(), encoded.scale as Float32Array, n));
        break;
      default:
        throw new Error(`unknown cache column ${f.name}`);
    }
  }
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: n, nullCount: 0, children }));
}

/** The rows of a record batch, values decoded to float32; checks the sample column against what the index expects. */
export function decodeRecordBatch(file: string, at: number, batch: RecordBatch, fp: CacheFingerprint, firstSample: number, count: number): CacheRows {
  const n = count * fp.seqLength;
  const where = `record batch at byte ${at}`;
  const fail = (detail: string): never => {
    throw new FormatError(file, `${where}: ${detail}. The part is corrupt: delete it and re-run cache-teacher (it rewrites missing parts).`);
  };
  if (batch.numRows !== n) fail(`${batch.numRows} rows, expected ${count} samples × ${fp.seqLength} positions = ${n}`);
  const col = (name: string): Data => {
    const c = batch.getChild(name);
    if (!c || c.data.length !== 1) return fail(`no column "${name}"`);
    return c.data[0];
  };
  const flatValues = (d: Data): ArrayLike<number> => (d.values as Uint32Array | Float32Array).subarray(d.offset, d.offset + d.length);
  const sample = flatValues(col('sample'));
  for (let r = 0; r < n; r += fp.seqLength) {
    const want = firstSample + r / fp.seqLength;
    if (sample[r] !== want) fail(`row ${r} is sample ${sample[r]}, expected ${want}`);
  }
  const width = fixedWidth(fp, fp.vocabSize);
  const childValues = (d: Data): ArrayLike<number> => {
    const c = d.children[0];
    return (c.values as UintArray | Float32Array).subarray(c.offset, c.offset + c.length);
  };
  let offsets: Int32Array;
  const lp = col('logprobs');
  if (width === null) {
    offsets = (lp.valueOffsets as Int32Array).slice(lp.offset, lp.offset + n + 1);
    if (offsets[0] !== 0) for (let r = n; r >= 0; r--) offsets[r] -= offsets[0];
  } else {
    offsets = uniformOffsets(n, width);
  }
  const total = offsets[n];
  // Corrupt offsets (a flipped byte in the list column) that decrease or go negative would make the per-row decode
  // loop over billions of positions; non-decreasing from 0 to `total` keeps every row inside the values checked below.
  for (let r = 0; r < n; r++)
    if (!(offsets[r] >= 0 && offsets[r] <= offsets[r + 1]))
      fail(`logprobs offsets go from ${offsets[r]} to ${offsets[r + 1]} at row ${r}; they must not decrease`);
  const rawValues = childValues(lp);
  if (rawValues.length !== total) fail(`logprobs hold ${rawValues.length} values, expected ${total}`);
  const enc: EncodedValues = { dtype: fp.valueDtype, data: rawValues as EncodedValues['data'] };
  if (fp.valueDtype === 'uint8') {
    enc.min = Float32Array.from(flatValues(col('logprobs_min')));
    enc.scale = Float32Array.from(flatValues(col('logprobs_scale')));
  }
  const out: CacheRows = { rows: n, offsets, logProbs: Float32Array.from(decodeValues(enc, offsets)) };
  if (fp.method !== 'full') {
    const ids = Int32Array.from(childValues(col('ids')));
    if (ids.length !== total) fail(`ids hold ${ids.length} values, expected ${total}`);
    for (let i = 0; i < ids.length; i++) if (ids[i] >= fp.vocabSize) fail(`id ${ids[i]} at value ${i} is outside the vocabulary [0, ${fp.vocabSize})`);
    out.ids = ids;
  }
  if (fp.method === 'sample') out.counts = Int32Array.from(childValues(col('counts')));
  if (fp.method === 'topk') out.ghost = Float32Array.from(flatValues(col('ghost')));
  return out;
}
