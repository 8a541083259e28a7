/**
 * The wasm backend's BatchMatMul is fast only when neither operand is transposed: measured here on [2048,128] ×
 * [128,384], 13 GFLOP/s plain against 1.7 (transposeB) and 0.6 (transposeA). Every linear layer's backward pass
 * multiplies by a transpose (dX = dY·Wᵀ, dW = Xᵀ·dY), and Llama's (out, in) weights are used transposed in the
 * forward pass too. So we wrap the kernel, through tfjs's own kernel registry: transposed operands are first
 * materialised by the Transpose kernel (O(size), cheap next to the product), then the fast path runs.
 */
import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  disposeData(dataId: object): boolean;
}

let wrapped = false;

export function registerWasmMatMul(): void {
  if (wrapped) return;
  const original = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!original || !transpose) return;
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({
    kernelName: 'BatchMatMul',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const { inputs, backend, attrs } = args;
      const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
      if (!transposeA && !transposeB) return original.kernelFunc(args);
      const materialise = (x: tf.TensorInfo): tf.TensorInfo => {
        const r = x.shape.length;
        const perm = [...Array(r).keys()];
        [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
        return transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as tf.TensorInfo;
      };
      const a2 = transposeA ? materialise(a) : a;
      const b2 = transposeB ? materialise(b) : b;
      const out = original.kernelFunc({ inputs: { a: a2, b: b2 }, backend, attrs: { ...attrs, transposeA: false, transposeB: false } });
      const wb = backend as unknown as WasmBackendLike;
      if (a2 !== a) wb.disposeData(a2.dataId);
      if (b2 !== b) wb.disposeData(b2.dataId);
      return out;
    },
  });
  wrapped = true;
}
