/**
 * Llama's RMSNorm, y = x · r · w with r = rsqrt(mean(x²) + eps) per row, as one WGSL kernel forward, where tfjs's
 * composition dispatches square, mean, add, rsqrt, mul, mul; and backward as three, where autodiff of the
 * composition dispatches about sixteen:
 * - dx = r·(dy·w) − x · r³ · mean(dy·w·x), one workgroup per row;
 * - dw = Σ_rows dy·x·r, a chunk kernel (each workgroup sums a chunk of rows, recomputing their r) and ColumnSum.
 * Only x and w are saved from the forward. A tfjs program has one output, so keeping r would take a kernel of its
 * own in the forward: inference (the teacher's forward) would pay a dispatch, and training would still run four.
 */
import * as tf from '@tensorflow/tfjs-core';
import { onWebgpu, registerWebgpuKernel, runKernel, runProgram } from './program.ts';
import { input, rowLayout, RowProgram, rowUniforms, type RowLayout, ROW_START } from './rowLayout.ts';
import { rowChunks, sumChunks } from './columnSum.ts';

const FORWARD = 'DistillRmsNorm';
const INPUT_GRAD = 'DistillRmsNormInputGrad';
const WEIGHT_GRAD_CHUNKS = 'DistillRmsNormWeightGradChunks';

type Pass = 'forward' | 'inputGrad' | 'weightGradChunks';

interface RmsNormAttrs {
  eps: number;
}

const INPUTS: Record<Pass, string[]> = {
  forward: ['x', 'weight'],
  inputGrad: ['dy', 'x', 'weight'],
  weightGradChunks: ['dy', 'x'],
};

/**
 * Forward and input gradient: one workgroup per row of x [rows, hidden], output [rows, hidden]. Weight gradient
 * chunks: one workgroup per chunk of `rowsPerChunk` rows, output [chunks, hidden], row c = Σ_{rows of chunk c} dy·x·r.
 */
class RmsNormProgram extends RowProgram {
  constructor(
    private readonly pass: Pass,
    rows: number,
    hidden: number,
    layout: RowLayout,
  ) {
    const out = pass === 'weightGradChunks' ? [rowChunks(rows).chunks, hidden] : [rows, hidden];
    super(INPUTS[pass], out, layout, `rmsNorm_${pass}`);
  }

  protected body(): string {
    return this.pass === 'forward' ? FORWARD_BODY : this.pass === 'inputGrad' ? INPUT_GRAD_BODY : WEIGHT_GRAD_CHUNKS_BODY;
  }
}


/** Loads the row at `base` into xs and works out r = rsqrt(mean(x²) + eps). */
const ROW_RMS = `
        var xs : array<Vec, SLOTS>;
        var squares = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            xs[k] = x[base + c];
            squares += xs[k] * xs[k];
          }
        }
        let r = inverseSqrt(rowSum(tid, vec2<f32>(lanesSum(squares), 0.0)).x / f32(hidden) + uniforms.eps);`;

const FORWARD_BODY = `${ROW_START}${ROW_RMS}
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) { result[base + c] = xs[k] * r * weight[c]; }
        }`;

const INPUT_GRAD_BODY = `${ROW_START}
        var xs : array<Vec, SLOTS>;
        var gs : array<Vec, SLOTS>;
        var squares = Vec(0.0);
        var dots = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            xs[k] = x[base + c];
            gs[k] = dy[base + c] * weight[c];
            squares += xs[k] * xs[k];
            dots += gs[k] * xs[k];
          }
        }
        let sums = rowSum(tid, vec2<f32>(lanesSum(squares), lanesSum(dots)));
        let r = inverseSqrt(sums.x / f32(hidden) + uniforms.eps);
        let along = r * r * r * sums.y / f32(hidden);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) { result[base + c] = gs[k] * r - xs[k] * along; }
        }`;

const WEIGHT_GRAD_CHUNKS_BODY = `
        let chunk = index / LANES;
        let live = chunk < uniforms.outShape.x;
        var sums : array<Vec, SLOTS>;
        // The bound is a uniform, so every lane runs rowSum equally often.
        for (var i = 0; i < uniforms.rowsPerChunk; i++) {
          let row = chunk * uniforms.rowsPerChunk + i;
          let base = min(row, rows - 1) * n;${ROW_RMS}
          if (row < rows) {
            for (var k = 0; k < SLOTS; k++) {
              let c = tid + k * LANES;
              if (c < n) { sums[k] += dy[base + c] * xs[k] * r; }
            }
          }
        }
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) { result[chunk * n + c] = sums[k]; }
        }`;

function runRmsNorm(pass: Pass): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { eps } = attrs as unknown as RmsNormAttrs;
    const [rows, hidden] = input(inputs, 'x').shape;
    const program = new RmsNormProgram(pass, rows, hidden, rowLayout(hidden));
    const data = INPUTS[pass].map((name) => input(inputs, name));
    return runProgram(backend as tf.KernelBackend, program, data, rowUniforms(eps, rowChunks(rows).rowsPerChunk));
  };
}

/** Whether the fused kernels apply: webgpu, float32 x [..., hidden] with weight [hidden]. */
export function fusedRmsNormApplies(x: tf.Tensor, weight: tf.Tensor): boolean {
  if (!onWebgpu() || x.dtype !== 'float32' || weight.dtype !== 'float32' || x.rank < 1 || x.size === 0) return false;
  return weight.rank === 1 && weight.shape[0] === x.shape[x.rank - 1];
}

/**
 * x · rsqrt(mean(x²) + eps) · weight over the last axis, differentiable with respect to x and weight (a
 * tf.Variable included). Webgpu only: check `fusedRmsNormApplies` first.
 */
export function fusedRmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, eps: number): T {
  if (!fusedRmsNormApplies(x, weight)) throw new Error(`fusedRmsNorm: not applicable to x [${x.shape}] on ${tf.getBackend()}`);
  registerWebgpuKernel(FORWARD, runRmsNorm('forward'));
  registerWebgpuKernel(INPUT_GRAD, runRmsNorm('inputGrad'));
  registerWebgpuKernel(WEIGHT_GRAD_CHUNKS, runRmsNorm('weightGradChunks'));
  const hidden = weight.shape[0];
  const shape2d: [number, number] = [x.size / hidden, hidden];
  const attrs = { eps } satisfies RmsNormAttrs as unknown as tf.NamedAttrMap;
  const fused = tf.customGrad((xIn, w, save) => {
    // Reshapes are free on webgpu: they share the buffer.
    const x2 = tf.reshape(xIn as tf.Tensor, shape2d);
    (save as tf.GradSaveFunc)([x2, w as tf.Tensor]);
    const y = runKernel<tf.Tensor2D>(FORWARD, { x: x2, weight: w as tf.Tensor1D }, attrs);
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) => tf.tidy(() => {
        const dy2 = tf.reshape(dy, shape2d);
        const dx = runKernel<tf.Tensor2D>(INPUT_GRAD, { dy: dy2, x: xs, weight: ws }, attrs);
        const chunks = runKernel<tf.Tensor2D>(WEIGHT_GRAD_CHUNKS, { dy: dy2, x: xs }, attrs);
        return [tf.reshape(dx, x.shape), sumChunks(chunks, 0, hidden, rowLayout(hidden).components)];
      }),
    };
  });
  return fused(x, weight) as T;
}
