/**
 * Tensors as they cross a worker boundary: the raw little-endian bytes of a typed array, with shape and dtype.
 *
 * msgpackr packs a typed array as plain binary and unpacks it as a Buffer that may sit at any offset of the frame,
 * so decoding copies into a fresh, aligned buffer before viewing it as Float32Array / Int32Array.
 */
import * as tf from '@tensorflow/tfjs-core';

export type FrameDtype = 'float32' | 'int32';

export interface TensorFrame {
  dtype: FrameDtype;
  shape: number[];
  bytes: Uint8Array;
}

export type FrameArray = Float32Array | Int32Array;

export function arrayToFrame(data: FrameArray, shape: readonly number[]): TensorFrame {
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== data.length) throw new RangeError(`tensor frame: shape [${shape.join(', ')}] holds ${size} values, the array ${data.length}`);
  const dtype: FrameDtype = data instanceof Float32Array ? 'float32' : 'int32';
  return { dtype, shape: [...shape], bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

export function frameToArray(f: TensorFrame): FrameArray {
  const size = f.shape.reduce((a, b) => a * b, 1);
  if (f.bytes.byteLength !== size * 4) {
    throw new RangeError(
      `tensor frame: ${f.bytes.byteLength} bytes for shape [${f.shape.join(', ')}] of ${f.dtype} (expected ${size * 4}); the frame is truncated or from another version`,
    );
  }
  const copy = new Uint8Array(f.bytes.byteLength);
  copy.set(f.bytes);
  if (f.dtype === 'float32') return new Float32Array(copy.buffer);
  if (f.dtype === 'int32') return new Int32Array(copy.buffer);
  throw new TypeError(`tensor frame: dtype ${String(f.dtype)} is not one of float32, int32`);
}

/** Reads a tensor back from its device; bool tensors travel as int32. */
export async function tensorToFrame(t: tf.Tensor): Promise<TensorFrame> {
  if (t.dtype !== 'float32' && t.dtype !== 'int32' && t.dtype !== 'bool') {
    throw new TypeError(`tensor frame: cannot send a ${t.dtype} tensor; only float32, int32 and bool cross workers`);
  }
  const data = await t.data();
  const typed = data instanceof Float32Array || data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
  return arrayToFrame(typed, t.shape);
}

export function frameToTensor(f: TensorFrame): tf.Tensor {
  return tf.tensor(frameToArray(f), f.shape, f.dtype);
}
