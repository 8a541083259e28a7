/**
 * The tfjs kernels of the `cuda` backend: each tfjs kernel name mapped onto the kernels of this folder. The list
 * covers every kernel the training, evaluation, inference and cache paths call (test/backend/cudaKernels.test.ts
 * records them on cpu and fails when one is missing here), and the element-wise family around them.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CudaBackend } from '../backend.ts';
import { BINARY, UNARY, binary, cast, copy, fill, select, unary } from './elementwise.ts';
import { reduce, softmax } from './reduce.ts';
import { broadcastTo, concat, pad, slice, tile, transpose } from './layout.ts';
import { gatherNd, gatherV2, oneHot, scatterNd, tensorScatterUpdate, unsortedSegmentSum } from './gather.ts';
import { batchMatMul } from './matMul.ts';
import { topK } from './topK.ts';
import { layerNorm, layerNormGrad, rmsNorm, rmsNormGrad } from './fused/norms.ts';
import { causalSoftmax, rotaryEmbedding, swiglu, swigluGrad } from './fused/attention.ts';
import { softmaxKl } from './fused/softmaxKl.ts';
import { adamwUpdate } from './fused/adamw.ts';
import { globalNorm } from './globalNorm.ts';
import type { AdamWUpdateAttrs } from '../../../ops/adamwUpdate.ts';
import type { SoftmaxKlAttrs } from '../../../ops/softmaxKl.ts';
import type { CausalSoftmaxAttrs } from '../../../ops/causalSoftmax.ts';

/** Named inputs as the kernel reads them: an optional input the call lacks reads as undefined. */
type NamedInputs = Record<string, tf.TensorInfo>;
type Kernel = (backend: CudaBackend, inputs: tf.TensorInfo[], attrs: Record<string, unknown>, named: NamedInputs) => tf.TensorInfo | tf.TensorInfo[];

/** A view of x with another shape: the same device memory, one more reference. */
function reshapeView(backend: CudaBackend, x: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape, dtype: x.dtype };
}

function axesOf(attrs: Record<string, unknown>, shape: number[]): number[] {
  return tf.util.parseAxisParam(attrs.axis as number | number[], shape);
}

function reduction(op: Parameters<typeof reduce>[3], mean = false): Kernel {
  return (backend, [x], attrs) => {
    const axes = axesOf(attrs, x.shape);
    const out = reduce(backend, x, axes, op, mean);
    if (!attrs.keepDims) return out;
    const kept = tf.backend_util.expandShapeToKeepDim(out.shape, axes);
    const view = reshapeView(backend, out, kept);
    backend.disposeIntermediate(out);
    return view;
  };
}

function sliceAlong(backend: CudaBackend, x: tf.TensorInfo, axis: number, start: number, length: number): tf.TensorInfo {
  const begin = x.shape.map((_, d) => (d === axis ? start : 0));
  const size = x.shape.map((n, d) => (d === axis ? length : n));
  return slice(backend, x, begin, size);
}

const eps = (attrs: Record<string, unknown>): number => attrs.eps as number;

/** Our fused ops' kernels, under the contracts written in src/ops/*.ts. */
const FUSED: Record<string, Kernel> = {
  RmsNorm: (b, _l, attrs, n) => rmsNorm(b, n.x, n.weight, eps(attrs)),
  RmsNormGrad: (b, _l, attrs, n) => rmsNormGrad(b, n.dy, n.x, n.weight, eps(attrs)),
  LayerNorm: (b, _l, attrs, n) => layerNorm(b, n.x, n.weight, n.bias, eps(attrs)),
  LayerNormGrad: (b, _l, attrs, n) => layerNormGrad(b, n.dy, n.x, n.weight, eps(attrs)),
  Swiglu: (b, _l, _a, n) => swiglu(b, n.gate, n.up),
  SwigluGrad: (b, _l, _a, n) => swigluGrad(b, n.dy, n.gate, n.up),
  RotaryEmbedding: (b, _l, _a, n) => rotaryEmbedding(b, n.x, n.cosTable, n.sinTable, false),
  RotaryEmbeddingGrad: (b, _l, _a, n) => rotaryEmbedding(b, n.x, n.cosTable, n.sinTable, true),
  CausalSoftmax: (b, _l, attrs, n) => causalSoftmax(b, n, attrs as unknown as CausalSoftmaxAttrs, false),
  CausalSoftmaxGrad: (b, _l, attrs, n) => causalSoftmax(b, n, attrs as unknown as CausalSoftmaxAttrs, true),
  SoftmaxKlForward: (b, _l, attrs, n) => softmaxKl(b, n, attrs as unknown as SoftmaxKlAttrs, false),
  SoftmaxKlBackward: (b, _l, attrs, n) => softmaxKl(b, n, attrs as unknown as SoftmaxKlAttrs, true),
  AdamWUpdate: (b, _l, attrs, n) => adamwUpdate(b, n.param, n.grad, n.m, n.v, attrs as unknown as AdamWUpdateAttrs),
  GlobalNorm: (b, list) => globalNorm(b, list),
};

const KERNELS: Record<string, Kernel> = {
  ...FUSED,
  BatchMatMul: (b, [x, y], attrs) => batchMatMul(b, x, y, attrs.transposeA as boolean, attrs.transposeB as boolean),
  Cast: (b, [x], attrs) => cast(b, x, attrs.dtype as tf.DataType),
  Select: (b, [c, t, e]) => select(b, c, t, e),
  AddN: (b, inputs) => {
    let acc = copy(b, inputs[0]);
    for (const t of inputs.slice(1)) {
      const next = binary(b, 'Add', acc, t);
      b.disposeIntermediate(acc);
      acc = next;
    }
    return acc;
  },
  Step: (b, [x], attrs) => unary(b, 'Step', x, (attrs.alpha as number) ?? 0),
  LeakyRelu: (b, [x], attrs) => unary(b, 'LeakyRelu', x, (attrs.alpha as number) ?? 0.2),
  ClipByValue: (b, [x], attrs) => unary(b, 'ClipByValue', x, attrs.clipValueMin as number, attrs.clipValueMax as number),
  Sum: reduction('sum'),
  Mean: reduction('sum', true),
  Prod: reduction('prod'),
  Max: (b, [x], attrs) => reduction('max')(b, [x], { axis: attrs.reductionIndices, keepDims: attrs.keepDims }, {}),
  Min: (b, [x], attrs) => reduction('min')(b, [x], { axis: attrs.axis, keepDims: attrs.keepDims }, {}),
  All: reduction('all'),
  Any: reduction('any'),
  ArgMax: (b, [x], attrs) => reduce(b, x, axesOf(attrs, x.shape), 'argmax'),
  ArgMin: (b, [x], attrs) => reduce(b, x, axesOf(attrs, x.shape), 'argmin'),
  Softmax: (b, [logits]) => softmax(b, logits),
  Reshape: (b, [x], attrs) => reshapeView(b, x, tf.util.inferFromImplicitShape(attrs.shape as number[], tf.util.sizeFromShape(x.shape))),
  ExpandDims: (b, [x], attrs) => {
    const shape = [...x.shape];
    let axis = attrs.dim as number;
    if (axis < 0) axis += x.shape.length + 1;
    shape.splice(axis, 0, 1);
    return reshapeView(b, x, shape);
  },
  Squeeze: (b, [x], attrs) => reshapeView(b, x, tf.util.squeezeShape(x.shape, attrs.axis as number[]).newShape),
  Identity: (b, [x]) => reshapeView(b, x, x.shape),
  Transpose: (b, [x], attrs) => transpose(b, x, attrs.perm as number[]),
  Slice: (b, [x], attrs) => {
    const [begin, size] = tf.slice_util.parseSliceParams(x as tf.Tensor, attrs.begin as number[], attrs.size as number[]);
    return slice(b, x, begin, size);
  },
  BroadcastTo: (b, [x], attrs) => broadcastTo(b, x, attrs.shape as number[]),
  Concat: (b, inputs, attrs) => {
    const axis = tf.util.parseAxisParam(attrs.axis as number, inputs[0].shape)[0];
    const live = inputs.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
    if (live.length === 1) return copy(b, live[0]);
    return concat(b, live.length ? live : inputs, axis);
  },
  Pack: (b, inputs, attrs) => {
    let axis = attrs.axis as number;
    if (axis < 0) axis += inputs[0].shape.length + 1;
    const views = inputs.map((t) => {
      const shape = [...t.shape];
      shape.splice(axis, 0, 1);
      return reshapeView(b, t, shape);
    });
    const out = concat(b, views, axis);
    for (const v of views) b.disposeIntermediate(v);
    return out;
  },
  Unpack: (b, [x], attrs) => {
    const axis = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    const shape = x.shape.filter((_, d) => d !== axis);
    const out: tf.TensorInfo[] = [];
    for (let i = 0; i < x.shape[axis]; i++) {
      const s = sliceAlong(b, x, axis, i, 1);
      out.push(reshapeView(b, s, shape));
      b.disposeIntermediate(s);
    }
    return out;
  },
  SplitV: (b, [x], attrs) => {
    const axis = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, attrs.numOrSizeSplits as number | number[], axis);
    let start = 0;
    return sizes.map((s) => {
      const out = sliceAlong(b, x, axis, start, s);
      start += s;
      return out;
    });
  },
  Tile: (b, [x], attrs) => tile(b, x, attrs.reps as number[]),
  PadV2: (b, [x], attrs) => pad(b, x, attrs.paddings as [number, number][], attrs.constantValue as number),
  GatherV2: (b, [x, indices], attrs) => gatherV2(b, x, indices, tf.util.parseAxisParam(attrs.axis as number, x.shape)[0], (attrs.batchDims as number) ?? 0),
  GatherNd: (b, [params, indices]) => gatherNd(b, params, indices),
  ScatterNd: (b, [indices, updates], attrs) => scatterNd(b, indices, updates, attrs.shape as number[]),
  TensorScatterUpdate: (b, [tensor, indices, updates]) => tensorScatterUpdate(b, tensor, indices, updates),
  UnsortedSegmentSum: (b, [x, ids], attrs) => unsortedSegmentSum(b, x, ids, attrs.numSegments as number),
  OneHot: (b, [indices], attrs) => oneHot(b, indices, attrs.depth as number, attrs.onValue as number, attrs.offValue as number, attrs.dtype as tf.DataType),
  TopK: (b, [x], attrs) => topK(b, x, attrs.k as number),
  Fill: (b, _inputs, attrs) => fill(b, attrs.shape as number[], attrs.value as number, (attrs.dtype as tf.DataType) ?? 'float32'),
  ZerosLike: (b, [x]) => fill(b, x.shape, 0, x.dtype),
  OnesLike: (b, [x]) => fill(b, x.shape, 1, x.dtype),
  Range: (b, _inputs, attrs) => {
    const { start, stop, step, dtype } = attrs as { start: number; stop: number; step: number; dtype: 'float32' | 'int32' };
    const n = Math.max(Math.ceil((stop - start) / step), 0);
    const values = dtype === 'int32' ? new Int32Array(n) : new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = start + i * step;
    return b.makeOutput([n], dtype, values);
  },
};

/** The inputs of a kernel call in tfjs's order: named maps are read in insertion order, as tfjs's kernels do. */
function ordered(inputs: tf.NamedTensorInfoMap): tf.TensorInfo[] {
  return Object.values(inputs).filter((t): t is tf.TensorInfo => t !== undefined && t !== null);
}

/** Input order for kernels whose named inputs do not come in a fixed order. */
const INPUT_ORDER: Record<string, string[]> = {
  BatchMatMul: ['a', 'b'],
  Select: ['condition', 't', 'e'],
  GatherV2: ['x', 'indices'],
  GatherNd: ['params', 'indices'],
  ScatterNd: ['indices', 'updates'],
  TensorScatterUpdate: ['tensor', 'indices', 'updates'],
  UnsortedSegmentSum: ['x', 'segmentIds'],
};

export const CUDA_KERNEL_NAMES: string[] = [...Object.keys(UNARY), ...Object.keys(BINARY), ...Object.keys(KERNELS)];

let registered = false;

/** Registers every kernel above for the backend named 'cuda' (once per process). */
export function registerCudaKernels(): void {
  if (registered) return;
  registered = true;
  const all: Record<string, Kernel> = { ...KERNELS };
  for (const op of Object.keys(UNARY)) if (!all[op]) all[op] = (b, [x]) => unary(b, op, x);
  for (const op of Object.keys(BINARY)) all[op] = (b, [x, y]) => binary(b, op, x, y);
  for (const [kernelName, kernel] of Object.entries(all)) {
    tf.registerKernel({
      kernelName,
      backendName: 'cuda',
      kernelFunc: ({ inputs, attrs, backend }) => {
        const order = INPUT_ORDER[kernelName];
        const list = order ? order.map((k) => inputs[k] as tf.TensorInfo) : ordered(inputs);
        return kernel(backend as CudaBackend, list, (attrs ?? {}) as Record<string, unknown>, inputs as NamedInputs);
      },
    });
  }
}
