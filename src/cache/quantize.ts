/**
 * How the teacher cache stores log-probabilities: float32 (exact), float16 (our own half conversion, ~3 significant
 * digits), or uint8 with a per-row affine map. Per row (one token position) because the spread of log-probs differs
 * a lot between positions (a confident position's top-K spans a few nats, an uncertain one's twenty), and a fixed
 * range would waste most of the 256 levels on one or the other.
 *
 * uint8:  q = round((v − min) / scale),  v ≈ min + q · scale,  scale = (max − min) / 255 (0 when max = min),
 * with min and scale stored per row as float32 (`logprobs_min`, `logprobs_scale`). A row's maximum and minimum are
 * reproduced to float32 rounding; other values to within scale / 2.
 */
import { HALF_MAX, fromHalfArray, toHalfArray } from './half.ts';

export type ValueDtype = 'float32' | 'float16' | 'uint8';
export const VALUE_DTYPES: readonly ValueDtype[] = ['float32', 'float16', 'uint8'];

export interface EncodedValues {
  dtype: ValueDtype;
  /** float32: Float32Array; float16: binary16 bits; uint8: levels. */
  data: Float32Array | Uint16Array | Uint8Array;
  /** uint8 only: per-row offset and step. */
  min?: Float32Array;
  scale?: Float32Array;
}

/** Bytes per stored value (per-row uint8 parameters are counted separately). */
export function valueBytes(dtype: ValueDtype): number {
  return dtype === 'float32' ? 4 : dtype === 'float16' ? 2 : 1;
}

/** Row r is values[offsets[r], offsets[r + 1]). */
export function uniformOffsets(rows: number, width: number): Int32Array {
  const o = new Int32Array(rows + 1);
  for (let r = 0; r <= rows; r++) o[r] = r * width;
  return o;
}

export function encodeValues(values: Float32Array, offsets: Int32Array, dtype: ValueDtype): EncodedValues {
  if (dtype === 'float32') return { dtype, data: values };
  if (dtype === 'float16') {
    // Log-probs below −65504 would become −Inf, and −Inf · 0 is NaN in a matmul: clamp to the finite range.
    const clamped = new Float32Array(values.length);
    for (let i = 0; i < values.length; i++) clamped[i] = Math.max(-HALF_MAX, Math.min(HALF_MAX, values[i]));
    return { dtype, data: toHalfArray(clamped) };
  }
  const rows = offsets.length - 1;
  const data = new Uint8Array(values.length);
  const min = new Float32Array(rows);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const a = offsets[r];
    const b = offsets[r + 1];
    if (a === b) continue;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = a; i < b; i++) {
      lo = Math.min(lo, values[i]);
      hi = Math.max(hi, values[i]);
    }
    min[r] = lo;
    const s = (hi - lo) / 255;
    scale[r] = s;
    // Levels from the stored float32 step, so that decoding (min + q · scale in float32) lands where encoding aimed.
    const step = scale[r];
    for (let i = a; i < b; i++) data[i] = step > 0 ? Math.max(0, Math.min(255, Math.round((values[i] - lo) / step))) : 0;
  }
  return { dtype, data, min, scale };
}

export function decodeValues(e: EncodedValues, offsets: Int32Array): Float32Array {
  if (e.dtype === 'float32') return e.data as Float32Array;
  if (e.dtype === 'float16') return fromHalfArray(e.data as Uint16Array);
  const q = e.data as Uint8Array;
  const out = new Float32Array(q.length);
  const min = e.min as Float32Array;
  const scale = e.scale as Float32Array;
  for (let r = 0; r + 1 < offsets.length; r++) {
    const lo = min[r];
    const s = scale[r];
    for (let i = offsets[r]; i < offsets[r + 1]; i++) out[i] = lo + q[i] * s;
  }
  return out;
}
