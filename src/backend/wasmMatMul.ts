/**
 * The wasm backend's BatchMatMul is fast only when neither operand is transposed: measured here on [2048,128] ×
 * [128,384], 13 GFLOP/s plain against 1.7 (transposeB) and 0.6 (transposeA). Every linear layer's backward pass
 * multiplies by a transpose (dX = dY·Wᵀ, dW = Xᵀ·dY), and Llama's (out, in) weights are used transposed in the
 * forward pass too. So we wrap the kernel, through tfjs's own kernel registry: transposed operands are first
 * materialised by the Transpose kernel (O(size), cheap next to the product), then the fast path runs.
 *
 * Its batched path is slow too (attention's [64 × 128×32] · [64 × 32×128]: 0.7 GFLOP/s batched against 4.0 as 64
 * separate products), so a batch is split into 2-D products, one per matrix, and packed back.
 */
import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  disposeData(dataId: object): boolean;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

let wrapped = false;

const batchOf = (x: tf.TensorInfo): number => x.shape.slice(0, -2).reduce((p, d) => p * d, 1);
const sameBatch = (a: tf.TensorInfo, b: tf.TensorInfo): boolean => a.shape.length === b.shape.length && a.shape.slice(0, -2).every((d, i) => d === b.shape[i]);

type KernelArgs = Parameters<tf.KernelFunc>[0];
const run = (name: string, inputs: KernelArgs['inputs'], backend: KernelArgs['backend'], attrs: object): tf.TensorInfo =>
  tf.getKernel(name, 'wasm')!.kernelFunc({ inputs, backend, attrs: attrs as tf.NamedAttrMap }) as tf.TensorInfo;

/**
 * a [..., m, k] · b [..., k, n] (same batch dims, no transposes) as one 2-D product per matrix. The matrices are
 * contiguous in wasm's heap, so operands and results are moved with typed-array copies (the wasm Slice kernel
 * took 13 ms for a 4096-element slice here).
 */
function perMatrix(a: tf.TensorInfo, b: tf.TensorInfo, backend: KernelArgs['backend'], attrs: object): tf.TensorInfo {
  const wb = backend as unknown as WasmBackendLike;
  const batch = batchOf(a);
  const [m, k] = a.shape.slice(-2);
  const n = b.shape[b.shape.length - 1];
  const out = wb.makeOutput([...a.shape.slice(0, -2), m, n], 'float32');
  for (let i = 0; i < batch; i++) {
    // Fresh operands each time: the wasm kernel caches XNNPACK's packed right operand by tensor id, so a reused
    // buffer with new contents would be multiplied as the old. Views are taken afresh too: a kernel call may
    // grow wasm's memory and detach older views.
    const ai = wb.makeOutput([m, k], 'float32');
    const bi = wb.makeOutput([k, n], 'float32');
    wb.typedArrayFromHeap(ai).set(wb.typedArrayFromHeap(a).subarray(i * m * k, (i + 1) * m * k));
    wb.typedArrayFromHeap(bi).set(wb.typedArrayFromHeap(b).subarray(i * k * n, (i + 1) * k * n));
    const p = run('BatchMatMul', { a: ai, b: bi }, backend, attrs);
    wb.typedArrayFromHeap(out).set(wb.typedArrayFromHeap(p), i * m * n);
    for (const t of [p, ai, bi]) wb.disposeData(t.dataId);
  }
  return out;
}

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
      if (!transposeA && !transposeB && !(batchOf(a) > 1 && sameBatch(a, b))) return original.kernelFunc(args);
      const materialise = (x: tf.TensorInfo): tf.TensorInfo => {
        const r = x.shape.length;
        const perm = [...Array(r).keys()];
        [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
        return transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as tf.TensorInfo;
      };
      const wb = backend as unknown as WasmBackendLike;
      const a2 = transposeA ? materialise(a) : a;
      const b2 = transposeB ? materialise(b) : b;
      const plain = { ...attrs, transposeA: false, transposeB: false };
      const out =
        batchOf(a2) > 1 && sameBatch(a2, b2)
          ? perMatrix(a2, b2, backend, plain)
          : (original.kernelFunc({ inputs: { a: a2, b: b2 }, backend, attrs: plain }) as tf.TensorInfo);
      if (a2 !== a) wb.disposeData(a2.dataId);
      if (b2 !== b) wb.disposeData(b2.dataId);
      return out;
    },
  });
  wrapped = true;
}
