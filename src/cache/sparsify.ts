/**
 * From the teacher's logits at some token positions to the rows a cache keeps (spec.ts): the top-K log-probs and
 * the ghost mass, N seeded draws, or the whole log-softmax. The log-softmax runs on the backend, in the same op the
 * online loss uses (divergences.ts logSoftmax), so a float32 full cache holds what online distillation computes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { logSoftmax } from '../losses/divergences.ts';
import { drawRow, positionSeed } from './sampling.ts';
import { uniformOffsets } from './quantize.ts';
import type { CacheRows, CacheSpec } from './spec.ts';

/** Where row 0 of the logits sits: rows run over positions of consecutive samples. */
export interface RowKeys {
  firstSample: number;
  seqLength: number;
  /** Position index (over the batch's samples × seq_length) of row 0. */
  firstRow: number;
}

/**
 * The cache rows for teacher logits [rows, V] (the caller disposes the logits, once this has resolved). The read
 * to the host is asynchronous because tfjs-webgpu in Node has no synchronous one (dataSync throws there).
 */
export async function sparsifyLogits(logits: tf.Tensor2D, spec: CacheSpec, keys: RowKeys): Promise<CacheRows> {
  const [rows, vocab] = logits.shape;
  if (spec.method === 'topk') {
    const [values, indices] = tf.tidy(() => {
      const r = tf.topk(logSoftmax(logits, spec.temperature), spec.topK);
      return [r.values, r.indices];
    });
    const [logProbs, indexData] = await Promise.all([values.data() as Promise<Float32Array>, indices.data()]);
    const ids = Int32Array.from(indexData);
    values.dispose();
    indices.dispose();
    const ghost = new Float32Array(rows);
    for (let r = 0; r < rows; r++) {
      let mass = 0;
      for (let k = 0; k < spec.topK; k++) mass += Math.exp(logProbs[r * spec.topK + k]);
      ghost[r] = Math.max(0, 1 - mass);
    }
    return { rows, offsets: uniformOffsets(rows, spec.topK), ids, logProbs: Float32Array.from(logProbs), ghost };
  }
  const lpT = logSoftmax(logits, spec.temperature);
  const lp = (await lpT.data()) as Float32Array;
  lpT.dispose();
  if (spec.method === 'full') return { rows, offsets: uniformOffsets(rows, vocab), logProbs: Float32Array.from(lp) };
  const offsets = new Int32Array(rows + 1);
  const ids: number[] = [];
  const counts: number[] = [];
  const values: number[] = [];
  for (let r = 0; r < rows; r++) {
    const at = keys.firstRow + r;
    const sample = keys.firstSample + Math.floor(at / keys.seqLength);
    const row = lp.subarray(r * vocab, (r + 1) * vocab);
    const d = drawRow(row, spec.samples, positionSeed(spec.sampleSeed, sample, at % keys.seqLength));
    for (let k = 0; k < d.ids.length; k++) {
      ids.push(d.ids[k]);
      counts.push(d.counts[k]);
      values.push(row[d.ids[k]]);
    }
    offsets[r + 1] = ids.length;
  }
  return { rows, offsets, ids: Int32Array.from(ids), counts: Int32Array.from(counts), logProbs: Float32Array.from(values) };
}

/** Rows of several calls joined in order (a record batch holds whole samples; the loss computes them in chunks). */
export function concatRows(parts: CacheRows[]): CacheRows {
  if (parts.length === 1) return parts[0];
  const rows = parts.reduce((a, p) => a + p.rows, 0);
  const total = parts.reduce((a, p) => a + p.offsets[p.rows], 0);
  const offsets = new Int32Array(rows + 1);
  const logProbs = new Float32Array(total);
  const has = (k: 'ids' | 'counts' | 'ghost'): boolean => parts[0][k] !== undefined;
  const ids = has('ids') ? new Int32Array(total) : undefined;
  const counts = has('counts') ? new Int32Array(total) : undefined;
  const ghost = has('ghost') ? new Float32Array(rows) : undefined;
  let r0 = 0;
  let v0 = 0;
  for (const p of parts) {
    for (let r = 1; r <= p.rows; r++) offsets[r0 + r] = v0 + p.offsets[r];
    const n = p.offsets[p.rows];
    logProbs.set(p.logProbs.subarray(0, n), v0);
    ids?.set((p.ids as Int32Array).subarray(0, n), v0);
    counts?.set((p.counts as Int32Array).subarray(0, n), v0);
    ghost?.set(p.ghost as Float32Array, r0);
    r0 += p.rows;
    v0 += n;
  }
  return { rows, offsets, logProbs, ids, counts, ghost };
}

/** Rows [start, end) of `rows` (views where possible). */
export function sliceRows(rows: CacheRows, start: number, end: number): CacheRows {
  const a = rows.offsets[start];
  const b = rows.offsets[end];
  const offsets = new Int32Array(end - start + 1);
  for (let r = start; r <= end; r++) offsets[r - start] = rows.offsets[r] - a;
  return {
    rows: end - start,
    offsets,
    logProbs: rows.logProbs.subarray(a, b),
    ids: rows.ids?.subarray(a, b),
    counts: rows.counts?.subarray(a, b),
    ghost: rows.ghost?.subarray(start, end),
  };
}
