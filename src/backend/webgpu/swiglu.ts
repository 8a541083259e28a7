/**
 * The webgpu kernels of src/ops/swiglu.ts (its header has the contract). The SwiGLU product of Llama's MLP,
 * silu(gate) · up = gate · σ(gate) · up, as one element-wise WGSL program, where tfjs's composition dispatches
 * sigmoid, mul, mul; and 'SwigluGrad' as two, where autodiff dispatches about eight:
 *   dgate = dy · up · σ · (1 + gate · (1 − σ)),   dup = dy · gate · σ.
 * Two programs rather than one writing [2, …]: a tfjs program has one output, and webgpu's slice is a kernel of its
 * own (no views), so splitting a [2, …] result would take 1 + 2 dispatches and write both halves twice.
 */
import * as tf from '@tensorflow/tfjs-core';
import { runProgram, type WebGPUProgram } from './program.ts';

type Pass = 'forward' | 'gateGrad' | 'upGrad';

/** Each pass reads only what it needs: an unread binding is an error under WebGPU's automatic layouts. */
const INPUTS: Record<Pass, string[]> = {
  forward: ['gate', 'up'],
  gateGrad: ['dy', 'gate', 'up'],
  upGrad: ['dy', 'gate'],
};

const RESULT: Record<Pass, string> = {
  forward: 'g * s * up[index]',
  gateGrad: 'dy[index] * up[index] * s * (1.0 + g * (1.0 - s))',
  upGrad: 'dy[index] * g * s',
};

/** One invocation per vector of 4 values (per value when the size is not a multiple of 4). */
class SwigluProgram implements WebGPUProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  variableComponents: number[];
  outputComponent: number;
  size = true;

  constructor(
    private readonly pass: Pass,
    shape: number[],
  ) {
    this.variableNames = INPUTS[pass];
    this.outputShape = shape;
    const elements = shape.reduce((a, d) => a * d, 1);
    const components = elements % 4 === 0 ? 4 : 1;
    this.variableComponents = this.variableNames.map(() => components);
    this.outputComponent = components;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    // runWebGPUProgram reshapes a flat dispatch past the per-dimension limit; `size` (in vectors) guards spare lanes.
    this.dispatch = [Math.ceil(elements / components / this.workgroupSize[0]), 1, 1];
    this.shaderKey = `swiglu_${pass}_c${components}`;
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index < uniforms.size) {
          let g = gate[index];
          // tfjs's sigmoid, so that both paths round alike.
          let s = 1.0 / (1.0 + exp(-1.0 * g));
          result[index] = ${RESULT[this.pass]};
        }
      }
    `;
  }
}

function runPass(pass: Pass, inputs: tf.NamedTensorInfoMap, backend: tf.KernelBackend): tf.TensorInfo {
  const data = INPUTS[pass].map((name) => {
    const t = inputs[name];
    if (!t) throw new Error(`swiglu kernel input ${name} missing`);
    return t;
  });
  return runProgram(backend, new SwigluProgram(pass, data[0].shape), data);
}

/** 'Swiglu': {gate, up} → silu(gate) · up. */
export const swigluKernel: tf.KernelFunc = ({ inputs, backend }) => runPass('forward', inputs, backend as tf.KernelBackend);

/** 'SwigluGrad': {dy, gate, up} → [dGate, dUp]. */
export const swigluGradKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const b = backend as tf.KernelBackend;
  return [runPass('gateGrad', inputs, b), runPass('upGrad', inputs, b)];
};
