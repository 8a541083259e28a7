/**
 * The webgpu kernels of src/ops/softmaxKl.ts (its header has the contract, every input, attr and output column):
 * the fused, chunked softmax + divergence of issue #10, each direction one WGSL program instead of the
 * composition's 21 (forward KL) to 38 (JSD) ops per chunk forward and 23 to 37 backward (each ~75 µs of host time
 * through Dawn, most a pass over a [rows, V] tensor). The next-token CE on labels rides along in the same passes (it
 * needs one more log-sum-exp at most), in place of its own 26 ops forward and 14 backward.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SoftmaxKlAttrs } from '../../ops/softmaxKl.ts';
import { runProgram } from './program.ts';
import { SoftmaxKlBackwardProgram } from './softmaxKlBackward.ts';
import { SoftmaxKlForwardProgram } from './softmaxKlForward.ts';
import { uniformData, type SoftmaxKlVariant } from './softmaxKlWgsl.ts';

function variantOf(inputs: tf.NamedTensorInfoMap, a: SoftmaxKlAttrs): SoftmaxKlVariant {
  const s = inputs.s as tf.TensorInfo;
  const t = inputs.t as tf.TensorInfo;
  // Both row strides multiples of 4 make the shared width one too, and every row start 16-byte aligned.
  return { kind: a.kind, vec4: s.shape[1] % 4 === 0 && t.shape[1] % 4 === 0, masked: inputs.mask !== undefined, ce: a.ce };
}

function uniformsOf(inputs: tf.NamedTensorInfoMap, a: SoftmaxKlAttrs): ReturnType<typeof uniformData> {
  const s = inputs.s as tf.TensorInfo;
  const t = inputs.t as tf.TensorInfo;
  return uniformData({ invTau: a.invTau, sharedCols: Math.min(s.shape[1], t.shape[1]), rowOffset: a.rowOffset, mixW: a.mixW });
}

/** The inputs in the programs' variableNames order: s, t, [stats, scale,] [mask,] [labels]. */
function ordered(inputs: tf.NamedTensorInfoMap, names: string[]): tf.TensorInfo[] {
  return names.map((n) => inputs[n] as tf.TensorInfo);
}

/** 'SoftmaxKlForward': {s, t, mask?, labels?} → [rows, 1 | 2] ('values') or [rows, STAT_COLUMNS] ('stats'). */
export const softmaxKlForwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const a = attrs as unknown as SoftmaxKlAttrs;
  const v = variantOf(inputs, a);
  const program = new SoftmaxKlForwardProgram((inputs.s as tf.TensorInfo).shape[0], v, a.layout);
  return runProgram(backend as tf.KernelBackend, program, ordered(inputs, program.variableNames), uniformsOf(inputs, a));
};

/** 'SoftmaxKlBackward': {s, t, stats, scale, mask?, labels?} → dS [rows, V_s]. */
export const softmaxKlBackwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const a = attrs as unknown as SoftmaxKlAttrs;
  const v = variantOf(inputs, a);
  const [rows, vocab] = (inputs.s as tf.TensorInfo).shape;
  const program = new SoftmaxKlBackwardProgram(rows, vocab, v);
  return runProgram(backend as tf.KernelBackend, program, ordered(inputs, program.variableNames), uniformsOf(inputs, a));
};
