/**
 * The SwiGLU product of Llama's MLP, silu(gate) · up = gate · σ(gate) · up, as one element-wise WGSL kernel, where
 * tfjs's composition dispatches sigmoid, mul, mul; and its backward as two, where autodiff dispatches about eight:
 *   dgate = dy · up · σ · (1 + gate · (1 − σ)),   dup = dy · gate · σ.
 * Two kernels rather than one writing [2, …]: a tfjs program has one output, and webgpu's slice is a kernel of its
 * own (no views), so splitting a [2, …] result would take 1 + 2 dispatches and write both halves twice.
 */
import * as tf from '@tensorflow/tfjs-core';
import { onWebgpu, registerWebgpuKernel, runKernel, runProgram, type WebGPUProgram } from './program.ts';

const FORWARD = 'DistillSwiglu';
const GATE_GRAD = 'DistillSwigluGateGrad';
const UP_GRAD = 'DistillSwigluUpGrad';

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

function runSwiglu(pass: Pass): tf.KernelFunc {
  return ({ inputs, backend }) => {
    const data = INPUTS[pass].map((name) => {
      const t = inputs[name];
      if (!t) throw new Error(`swiglu kernel input ${name} missing`);
      return t;
    });
    return runProgram(backend as tf.KernelBackend, new SwigluProgram(pass, data[0].shape), data);
  };
}

/** Whether the fused kernels apply: webgpu, float32 gate and up of one shape. */
export function swigluApplies(gate: tf.Tensor, up: tf.Tensor): boolean {
  if (!onWebgpu() || gate.dtype !== 'float32' || up.dtype !== 'float32' || gate.size === 0) return false;
  return tf.util.arraysEqual(gate.shape, up.shape);
}

/** silu(gate) · up, differentiable with respect to both. Webgpu only: check `swigluApplies` first. */
export function swiglu<T extends tf.Tensor>(gate: T, up: T): T {
  if (!swigluApplies(gate, up)) throw new Error(`swiglu: not applicable to gate [${gate.shape}], up [${up.shape}] on ${tf.getBackend()}`);
  registerWebgpuKernel(FORWARD, runSwiglu('forward'));
  registerWebgpuKernel(GATE_GRAD, runSwiglu('gateGrad'));
  registerWebgpuKernel(UP_GRAD, runSwiglu('upGrad'));
  const fused = tf.customGrad((g, u, save) => {
    (save as tf.GradSaveFunc)([g as tf.Tensor, u as tf.Tensor]);
    return {
      value: runKernel<T>(FORWARD, { gate: g as tf.Tensor, up: u as tf.Tensor }),
      gradFunc: (dy: T, [gs, us]: tf.Tensor[]) => [
        runKernel<T>(GATE_GRAD, { dy, gate: gs, up: us }),
        runKernel<T>(UP_GRAD, { dy, gate: gs }),
      ],
    };
  });
  return fused(gate, up) as T;
}
