/**
 * Token windows as Arrow record batches: the form in which data streams through the pipeline. One row per sample,
 * column `tokens` a FixedSizeList<Int32> of seq_length + 1 ids (inputs and shifted labels), so a batch is one
 * contiguous Int32 buffer that becomes a tensor without a copy per row.
 */
import { Field, FixedSizeList, Int32, makeData, RecordBatch, Schema, Struct } from 'apache-arrow';

export function tokenRecordBatch(flat: Int32Array, rows: number, width: number): RecordBatch {
  if (flat.length !== rows * width) throw new RangeError(`tokenRecordBatch: ${flat.length} ids for ${rows} rows of ${width}`);
  const item = new Field('item', new Int32(), false);
  const listType = new FixedSizeList(width, item);
  const child = makeData({ type: new Int32(), length: flat.length, nullCount: 0, data: flat });
  const tokens = makeData({ type: listType, length: rows, nullCount: 0, child });
  const fields = [new Field('tokens', listType, false)];
  const struct = makeData({ type: new Struct(fields), length: rows, nullCount: 0, children: [tokens] });
  return new RecordBatch(new Schema(fields), struct);
}

/** The batch's ids as one [rows × width] Int32Array (a view when the batch holds a single chunk). */
export function tokenRecordIds(batch: RecordBatch): { ids: Int32Array; rows: number; width: number } {
  const col = batch.getChild('tokens');
  if (!col) throw new Error('record batch has no "tokens" column');
  const type = col.type as FixedSizeList;
  const data = col.data[0];
  const values = data.children[0].values as Int32Array;
  const offset = data.children[0].offset;
  return { ids: values.subarray(offset, offset + batch.numRows * type.listSize), rows: batch.numRows, width: type.listSize };
}
