/**
 * The webgpu kernels of src/ops/causalSoftmax.ts (its header has the contract). Attention's
 * softmax(scores · scale + causal mask) over the last axis of [batch, heads, queries, keys] scores as one WGSL
 * program, and its backward as one more, where tfjs's composition dispatches mul, add, softmax forward and
 * mul, sum, mul, sub, mul backward. The mask is not read from memory: each invocation works out whether key j is
 * visible from query i (j ≤ i, and i − j < window under a sliding window) from the positions themselves.
 *
 * Positions are the row and column indices (a square mask starting at position 0), or, under context parallelism,
 * read from two int32 tensors holding each query row's and key column's global position. Masked probabilities are
 * exactly 0, as tfjs's softmax makes them from −1e9 scores.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalSoftmaxAttrs } from '../../ops/causalSoftmax.ts';
import { runProgram, type WebGPUProgram } from './program.ts';

/**
 * One workgroup per row (as tfjs's SoftmaxProgram), the row reduced in workgroup memory. Forward: `scores` → P.
 * Backward: (`dProbs`, `probs`) → dScores = scale · (P ⊙ dP − rowsum(P ⊙ dP) · P), the order tfjs's Softmax
 * gradient multiplies in, so that the two paths agree to rounding.
 */
class CausalSoftmaxProgram implements WebGPUProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = 'scale : f32, window : i32,';

  constructor(
    shape: number[],
    private readonly backward: boolean,
    private readonly positioned: boolean,
  ) {
    this.outputShape = shape;
    const data = backward ? ['dProbs', 'probs'] : ['scores'];
    this.variableNames = positioned ? [...data, 'queryPositions', 'keyPositions'] : data;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    const rows = shape[0] * shape[1] * shape[2];
    // Long rows get more lanes (tfjs's softmax switches at 4096; 1024 is a guess, not yet timed on the H200). tfjs
    // appends the workgroup size to the shader key itself.
    this.workgroupSize = [shape[3] >= 1024 ? 256 : 64, 1, 1];
    // A flat dispatch of one workgroup per row; runWebGPUProgram reshapes it to 2-D past the per-dimension limit.
    this.dispatch = [rows, 1, 1];
    this.shaderKey = `causalSoftmax_${backward ? 'backward' : 'forward'}_${positioned ? 'positions' : 'square'}`;
  }

  getUserCode(): string {
    const block = this.workgroupSize[0];
    // Square layout: only columns max(0, i − window + 1) ..= i can be visible, so the reductions skip the rest.
    const position = this.positioned
      ? `fn queryPosition(i : i32) -> i32 { return queryPositions[i]; }
         fn keyPosition(j : i32) -> i32 { return keyPositions[j]; }
         fn firstColumn(qp : i32) -> i32 { return 0; }
         fn endColumn(qp : i32, cols : i32) -> i32 { return cols; }`
      : `fn queryPosition(i : i32) -> i32 { return i; }
         fn keyPosition(j : i32) -> i32 { return j; }
         fn firstColumn(qp : i32) -> i32 { return max(0, qp - uniforms.window + 1); }
         fn endColumn(qp : i32, cols : i32) -> i32 { return min(cols, qp + 1); }`;
    const rowTerm = this.backward ? 'dProbs[base + col] * probs[base + col]' : 'scores[base + col] * uniforms.scale';
    const reduce = (op: string): string => `
        for (var stride = ${block / 2}; stride > 0; stride = stride / 2) {
          if (tid < stride) { partial[tid] = ${op}; }
          workgroupBarrier();
        }`;
    const forward = `
        var threadMax = -3.402823e+38f;
        for (var col = first + tid; col < end; col += ${block}) {
          if (visible(qp, keyPosition(col))) { threadMax = max(threadMax, ${rowTerm}); }
        }
        partial[tid] = threadMax;
        workgroupBarrier();
        ${reduce('max(partial[tid], partial[tid + stride])')}
        let rowMax = partial[0];
        // Every lane has read the maximum before the sums overwrite it.
        workgroupBarrier();
        var threadSum = 0.0;
        for (var col = first + tid; col < end; col += ${block}) {
          if (visible(qp, keyPosition(col))) { threadSum += exp(${rowTerm} - rowMax); }
        }
        partial[tid] = threadSum;
        workgroupBarrier();
        ${reduce('partial[tid] + partial[tid + stride]')}
        let rowSum = partial[0];
        for (var col = tid; col < cols; col += ${block}) {
          var p = 0.0;
          if (visible(qp, keyPosition(col))) { p = exp(${rowTerm} - rowMax) / rowSum; }
          if (live) { result[base + col] = p; }
        }`;
    const backward = `
        var threadDot = 0.0;
        for (var col = first + tid; col < end; col += ${block}) {
          if (visible(qp, keyPosition(col))) { threadDot += ${rowTerm}; }
        }
        partial[tid] = threadDot;
        workgroupBarrier();
        ${reduce('partial[tid] + partial[tid + stride]')}
        let rowDot = partial[0];
        for (var col = tid; col < cols; col += ${block}) {
          var g = 0.0;
          if (visible(qp, keyPosition(col))) {
            let p = probs[base + col];
            g = (dProbs[base + col] * p - rowDot * p) * uniforms.scale;
          }
          if (live) { result[base + col] = g; }
        }`;
    return `
      var<workgroup> partial : array<f32, ${block}>;
      ${position}
      fn visible(qp : i32, kp : i32) -> bool { return kp <= qp && qp - kp < uniforms.window; }

      fn main(index : i32) {
        let tid = i32(localId.x);
        let cols = uniforms.outShape.w;
        let rows = uniforms.outShape.x * uniforms.outShape.y * uniforms.outShape.z;
        // Spare workgroups of a reshaped dispatch redo the last row (barriers need every lane) and write nothing.
        let live = index / ${block} < rows;
        let row = min(index / ${block}, rows - 1);
        let base = row * cols;
        let qp = queryPosition(row % uniforms.outShape.z);
        let first = firstColumn(qp);
        let end = endColumn(qp, cols);
        ${this.backward ? backward : forward}
      }
    `;
  }
}

function runCausalSoftmax(backward: boolean): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { scale, window } = attrs as unknown as CausalSoftmaxAttrs;
    const t = inputs as Record<string, tf.TensorInfo>;
    const data = backward ? [t.dProbs, t.probs] : [t.scores];
    const positioned = t.queryPositions !== undefined;
    const all = positioned ? [...data, t.queryPositions, t.keyPositions] : data;
    const program = new CausalSoftmaxProgram(data[0].shape, backward, positioned);
    return runProgram(backend as tf.KernelBackend, program, all, [
      { type: 'float32', data: [scale] },
      { type: 'int32', data: [window] },
    ]);
  };
}

/** 'CausalSoftmax': {scores, queryPositions?, keyPositions?} → probs. */
export const causalSoftmaxKernel = runCausalSoftmax(false);

/** 'CausalSoftmaxGrad': {dProbs, probs, queryPositions?, keyPositions?} → dScores. */
export const causalSoftmaxGradKernel = runCausalSoftmax(true);
