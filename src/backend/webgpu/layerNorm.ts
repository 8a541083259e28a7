/**
 * The webgpu kernels of src/ops/layerNorm.ts (its header has the contract). GPT-2's LayerNorm,
 * y = (x − μ) · rstd · w + b with the biased variance and rstd = rsqrt(var + eps) per row, as one WGSL program
 * forward, where tfjs's composition (moments, sub, rsqrt, mul, mul, add) dispatches ten; and 'LayerNormGrad' as four
 * programs in turn, where autodiff of the composition dispatches about twenty-six:
 * - dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)) with g = dy·w and x̂ = (x − μ)·rstd, one workgroup per row;
 * - dw = Σ_rows dy·x̂ and db = Σ_rows dy: one chunk kernel writes both partial sums side by side, [chunks, 2·hidden],
 *   and ColumnSum adds up each half (two dispatches; a [2, hidden] sum would need two slices, also dispatches).
 * The mean and variance are two reductions, as tf.moments computes them (the mean first, then the mean of squared
 * deviations), not E[x²] − μ², which loses digits when |μ| is large against the spread.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayerNormAttrs } from '../../ops/layerNorm.ts';
import { disposeIntermediates, runProgram } from './program.ts';
import { input, rowLayout, RowProgram, rowUniforms, type RowLayout, ROW_START } from './rowLayout.ts';
import { rowChunks, sumChunks } from './columnSum.ts';

type Pass = 'forward' | 'inputGrad' | 'paramGradChunks';

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

/** Runs one pass's program on the kernel's inputs (x [rows, hidden] names the shape). */
function runPass(pass: Pass, inputs: tf.NamedTensorInfoMap, backend: tf.KernelBackend, eps: number): tf.TensorInfo {
  const [rows, hidden] = input(inputs, 'x').shape;
  const program = new LayerNormProgram(pass, rows, hidden, rowLayout(hidden));
  const data = INPUTS[pass].map((name) => input(inputs, name));
  return runProgram(backend, program, data, rowUniforms(eps, rowChunks(rows).rowsPerChunk));
}

/** 'LayerNorm': {x, weight, bias} → y. */
export const layerNormKernel: tf.KernelFunc = ({ inputs, backend, attrs }) =>
  runPass('forward', inputs, backend as tf.KernelBackend, (attrs as unknown as LayerNormAttrs).eps);

/**
 * 'LayerNormGrad': {dy, x, weight} → [dx, dWeight, dBias]: the input gradient, the parameter-gradient chunks, and a
 * ColumnSum of each half of them.
 */
export const layerNormGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const b = backend as tf.KernelBackend;
  const { eps } = attrs as unknown as LayerNormAttrs;
  const hidden = input(inputs, 'x').shape[1];
  const components = rowLayout(hidden).components;
  const dx = runPass('inputGrad', inputs, b, eps);
  const chunks = runPass('paramGradChunks', inputs, b, eps);
  const dWeight = sumChunks(b, chunks, 0, hidden, components);
  const dBias = sumChunks(b, chunks, hidden, hidden, components);
  disposeIntermediates(b, [chunks]);
  return [dx, dWeight, dBias];
};
