/**
 * GPT-2's LayerNorm, y = (x − μ) · rstd · w + b with the biased variance and rstd = rsqrt(var + eps) per row, as one
 * WGSL kernel forward, where tfjs's composition (moments, sub, rsqrt, mul, mul, add) dispatches ten; and backward
 * as four, where autodiff of the composition dispatches about twenty-six:
 * - dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)) with g = dy·w and x̂ = (x − μ)·rstd, one workgroup per row;
 * - dw = Σ_rows dy·x̂ and db = Σ_rows dy: one chunk kernel writes both partial sums side by side, [chunks, 2·hidden],
 *   and ColumnSum adds up each half (two dispatches; a [2, hidden] sum would need two slices, also dispatches).
 * The mean and variance are two reductions, as tf.moments computes them (the mean first, then the mean of squared
 * deviations), not E[x²] − μ², which loses digits when |μ| is large against the spread.
 */
import * as tf from '@tensorflow/tfjs-core';
import { onWebgpu, registerWebgpuKernel, runKernel, runProgram } from './program.ts';
import { input, rowLayout, RowProgram, rowUniforms, type RowLayout, ROW_START } from './rowLayout.ts';
import { rowChunks, sumChunks } from './columnSum.ts';

const FORWARD = 'DistillLayerNorm';
const INPUT_GRAD = 'DistillLayerNormInputGrad';
const PARAM_GRAD_CHUNKS = 'DistillLayerNormParamGradChunks';

type Pass = 'forward' | 'inputGrad' | 'paramGradChunks';

interface LayerNormAttrs {
  eps: number;
}

const INPUTS: Record<Pass, string[]> = {
  forward: ['x', 'weight', 'bias'],
  inputGrad: ['dy', 'x', 'weight'],
  paramGradChunks: ['dy', 'x'],
};

/**
 * Forward and input gradient: one workgroup per row of x [rows, hidden], output [rows, hidden]. Parameter
 * gradient chunks: one workgroup per chunk of rows, output [chunks, 2·hidden]: Σ dy·x̂ then Σ dy over the chunk.
 */
class LayerNormProgram extends RowProgram {
  constructor(
    private readonly pass: Pass,
    rows: number,
    hidden: number,
    layout: RowLayout,
  ) {
    const out = pass === 'paramGradChunks' ? [rowChunks(rows).chunks, 2 * hidden] : [rows, hidden];
    super(INPUTS[pass], out, layout, `layerNorm_${pass}`);
  }

  protected body(): string {
    return this.pass === 'forward' ? FORWARD_BODY : this.pass === 'inputGrad' ? INPUT_GRAD_BODY : PARAM_GRAD_CHUNKS_BODY;
  }
}


/** Loads the row at `base` into xs and works out its mean and rstd; `extra` runs per vector c of the row. */
function rowStatistics(extra = ''): string {
  return `
        var xs : array<Vec, SLOTS>;
        var total = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            xs[k] = x[base + c];
            total += xs[k];
          }
        }
        let mean = rowSum(tid, vec2<f32>(lanesSum(total), 0.0)).x / f32(hidden);
        var squares = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            let d = xs[k] - mean;
            squares += d * d;
          }
        }
        let rstd = inverseSqrt(rowSum(tid, vec2<f32>(lanesSum(squares), 0.0)).x / f32(hidden) + uniforms.eps);
        ${extra}`;
}

const FORWARD_BODY = `${ROW_START}
        ${rowStatistics()}
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) { result[base + c] = (xs[k] - mean) * rstd * weight[c] + bias[c]; }
        }`;

// Σg rides along with the mean's reduction and Σg·(x − μ) with the variance's, so the backward reduces twice too.
const INPUT_GRAD_BODY = `${ROW_START}
        var xs : array<Vec, SLOTS>;
        var gs : array<Vec, SLOTS>;
        var total = Vec(0.0);
        var gTotal = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            xs[k] = x[base + c];
            gs[k] = dy[base + c] * weight[c];
            total += xs[k];
            gTotal += gs[k];
          }
        }
        let firstSums = rowSum(tid, vec2<f32>(lanesSum(total), lanesSum(gTotal)));
        let mean = firstSums.x / f32(hidden);
        let meanG = firstSums.y / f32(hidden);
        var squares = Vec(0.0);
        var dots = Vec(0.0);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (c < n) {
            let d = xs[k] - mean;
            squares += d * d;
            dots += gs[k] * d;
          }
        }
        let secondSums = rowSum(tid, vec2<f32>(lanesSum(squares), lanesSum(dots)));
        let rstd = inverseSqrt(secondSums.x / f32(hidden) + uniforms.eps);
        let meanGNormed = secondSums.y * rstd / f32(hidden);
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) { result[base + c] = rstd * (gs[k] - meanG - (xs[k] - mean) * rstd * meanGNormed); }
        }`;

const PARAM_GRAD_CHUNKS_BODY = `
        let chunk = index / LANES;
        let live = chunk < uniforms.outShape.x;
        var weightSums : array<Vec, SLOTS>;
        var biasSums : array<Vec, SLOTS>;
        // The bound is a uniform, so every lane runs rowSum equally often.
        for (var i = 0; i < uniforms.rowsPerChunk; i++) {
          let row = chunk * uniforms.rowsPerChunk + i;
          let base = min(row, rows - 1) * n;
          ${rowStatistics()}
          if (row < rows) {
            for (var k = 0; k < SLOTS; k++) {
              let c = tid + k * LANES;
              if (c < n) {
                let g = dy[base + c];
                weightSums[k] += g * (xs[k] - mean) * rstd;
                biasSums[k] += g;
              }
            }
          }
        }
        for (var k = 0; k < SLOTS; k++) {
          let c = tid + k * LANES;
          if (live && c < n) {
            result[chunk * 2 * n + c] = weightSums[k];
            result[chunk * 2 * n + n + c] = biasSums[k];
          }
        }`;

function runLayerNorm(pass: Pass): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { eps } = attrs as unknown as LayerNormAttrs;
    const [rows, hidden] = input(inputs, 'x').shape;
    const program = new LayerNormProgram(pass, rows, hidden, rowLayout(hidden));
    const data = INPUTS[pass].map((name) => input(inputs, name));
    return runProgram(backend as tf.KernelBackend, program, data, rowUniforms(eps, rowChunks(rows).rowsPerChunk));
  };
}

/** Whether the fused kernels apply: webgpu, float32 x [..., hidden] with weight and bias [hidden]. */
export function fusedLayerNormApplies(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor): boolean {
  if (!onWebgpu() || x.rank < 1 || x.size === 0) return false;
  const hidden = x.shape[x.rank - 1];
  const vector = (t: tf.Tensor): boolean => t.dtype === 'float32' && t.rank === 1 && t.shape[0] === hidden;
  return x.dtype === 'float32' && vector(weight) && vector(bias);
}

/**
 * LayerNorm over the last axis (torch.nn.LayerNorm: biased variance, eps inside the square root), differentiable
 * with respect to x, weight and bias (tf.Variables included). Webgpu only: check `fusedLayerNormApplies` first.
 */
export function fusedLayerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): T {
  if (!fusedLayerNormApplies(x, weight, bias)) throw new Error(`fusedLayerNorm: not applicable to x [${x.shape}] on ${tf.getBackend()}`);
  registerWebgpuKernel(FORWARD, runLayerNorm('forward'));
  registerWebgpuKernel(INPUT_GRAD, runLayerNorm('inputGrad'));
  registerWebgpuKernel(PARAM_GRAD_CHUNKS, runLayerNorm('paramGradChunks'));
  const hidden = weight.shape[0];
  const shape2d: [number, number] = [x.size / hidden, hidden];
  const attrs = { eps } satisfies LayerNormAttrs as unknown as tf.NamedAttrMap;
  const fused = tf.customGrad((xIn, w, b, save) => {
    // Reshapes are free on webgpu: they share the buffer.
    const x2 = tf.reshape(xIn as tf.Tensor, shape2d);
    (save as tf.GradSaveFunc)([x2, w as tf.Tensor]);
    const y = runKernel<tf.Tensor2D>(FORWARD, { x: x2, weight: w as tf.Tensor1D, bias: b as tf.Tensor1D }, attrs);
    return {
      value: tf.reshape(y, x.shape),
      gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) => tf.tidy(() => {
        const dy2 = tf.reshape(dy, shape2d);
        const dx = runKernel<tf.Tensor2D>(INPUT_GRAD, { dy: dy2, x: xs, weight: ws }, attrs);
        const chunks = runKernel<tf.Tensor2D>(PARAM_GRAD_CHUNKS, { dy: dy2, x: xs }, attrs);
        const components = rowLayout(hidden).components;
        return [tf.reshape(dx, x.shape), sumChunks(chunks, 0, hidden, components), sumChunks(chunks, hidden, hidden, components)];
      }),
    };
  });
  return fused(x, weight, bias) as T;
}
