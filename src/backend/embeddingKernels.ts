/**
 * Makes embedding lookups (`tf.gather`) differentiable on every backend.
 *
 * tfjs's gradient of GatherV2 scatters rows with the UnsortedSegmentSum kernel, which the wasm backend lacks. A
 * one-hot matmul over the vocabulary would work but costs V x tokens x hidden multiply-adds per step (it made a KD
 * step 36x slower than PyTorch here). So we register the missing kernel for wasm with tfjs's own
 * `registerKernel`: a scatter-add over wasm's heap, O(tokens x hidden), the same work PyTorch's embedding backward does.
 */
import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** out[segment[i], :] += x[i, :] for a 2-D (or flattened inner) x; rows with ids outside [0, numSegments) are dropped, as in TF. */
export function unsortedSegmentSumHost(
  x: Float32Array | Int32Array | Uint8Array,
  segmentIds: Int32Array | Float32Array | Uint8Array,
  numSegments: number,
  out: Float32Array | Int32Array | Uint8Array,
): void {
  const rows = segmentIds.length;
  const inner = rows === 0 ? 0 : x.length / rows;
  out.fill(0);
  for (let r = 0; r < rows; r++) {
    const s = segmentIds[r];
    if (s < 0 || s >= numSegments) continue;
    const src = r * inner;
    const dst = s * inner;
    for (let j = 0; j < inner; j++) out[dst + j] += x[src + j];
  }
}

const registered = new Set<string>();

export function registerEmbeddingKernels(backend: string): void {
  if (backend !== 'wasm' || registered.has(backend)) return;
  if (tf.getKernel('UnsortedSegmentSum', 'wasm')) return;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend: b }) => {
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const { numSegments } = attrs as unknown as { numSegments: number };
      const wb = b as unknown as WasmBackendLike;
      if (segmentIds.shape.length !== 1 || x.shape[0] !== segmentIds.shape[0]) {
        throw new Error(`UnsortedSegmentSum (wasm): expected 1-D segmentIds matching x's first dimension, got x [${x.shape}] and ids [${segmentIds.shape}]`);
      }
      const out = wb.makeOutput([numSegments, ...x.shape.slice(1)], x.dtype);
      // wasm tensors live in the module's heap: these are views, not copies.
      unsortedSegmentSumHost(wb.typedArrayFromHeap(x), wb.typedArrayFromHeap(segmentIds), numSegments, wb.typedArrayFromHeap(out));
      return out;
    },
  });
  registered.add(backend);
}
