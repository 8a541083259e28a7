/**
 * The webgpu kernels of src/ops/rotaryEmbedding.ts (its header has the contract). Rotary position embedding,
 * x·cos + rotate_half(x)·sin, as one WGSL program, and its backward (the transposed rotation) as one more, where tfjs's composition dispatches split, concat, mul, mul, add forward and about as
 * many backward. It reads the same tables as the composition (rope.ts): `cos` and `sinSigned`, [seq, headDim],
 * sin with rotate_half's sign folded in, so the two paths multiply the same float32 numbers.
 */
import * as tf from '@tensorflow/tfjs-core';
import { runProgram, type WebGPUProgram } from './program.ts';

/**
 * One invocation per element of x [batch, heads, seq, headDim]. Lane i pairs with lane σ(i) = i ± headDim/2 of the
 * same row. Forward: y_i = x_i·cos_i + x_σ(i)·sinSigned_i. The map is linear, so the backward is its transpose:
 * dx_i = dy_i·cos_i + dy_σ(i)·sinSigned_σ(i) (σ is its own inverse), whatever the tables hold.
 */
class RotaryEmbeddingProgram implements WebGPUProgram {
  variableNames = ['x', 'cosTable', 'sinTable'];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;

  constructor(
    shape: number[],
    private readonly transposed: boolean,
  ) {
    this.outputShape = shape;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    const elements = shape.reduce((a, d) => a * d, 1);
    // runWebGPUProgram reshapes a flat dispatch past the per-dimension limit; `size` guards the spare lanes.
    this.dispatch = [Math.ceil(elements / this.workgroupSize[0]), 1, 1];
    this.shaderKey = `rotaryEmbedding_${transposed ? 'backward' : 'forward'}`;
  }

  getUserCode(): string {
    const partnerSin = this.transposed ? 'sinTable[rowStart + pair]' : 'sinTable[rowStart + lane]';
    return `
      fn main(index : i32) {
        if (index < uniforms.size) {
          let headDim = uniforms.xShape.w;
          let half = headDim / 2;
          let lane = index % headDim;
          let position = (index / headDim) % uniforms.xShape.z;
          let pair = select(lane - half, lane + half, lane < half);
          let rowStart = position * headDim;
          setOutputAtIndex(index, x[index] * cosTable[rowStart + lane] + x[index - lane + pair] * ${partnerSin});
        }
      }
    `;
  }
}

function runRotaryEmbedding(transposed: boolean): tf.KernelFunc {
  return ({ inputs, backend }) => {
    const { x, cosTable, sinTable } = inputs as Record<'x' | 'cosTable' | 'sinTable', tf.TensorInfo>;
    return runProgram(backend as tf.KernelBackend, new RotaryEmbeddingProgram(x.shape, transposed), [x, cosTable, sinTable]);
  };
}

/** 'RotaryEmbedding': {x, cosTable, sinTable} → y. */
export const rotaryEmbeddingKernel = runRotaryEmbedding(false);

/** 'RotaryEmbeddingGrad': {x: dy, cosTable, sinTable} → dx. */
export const rotaryEmbeddingGradKernel = runRotaryEmbedding(true);
