/**
 * The webgpu kernels of src/ops/rmsNorm.ts (its header has the contract). Llama's RMSNorm, y = x · r · w with
 * r = rsqrt(mean(x²) + eps) per row, as one WGSL program forward, where tfjs's composition dispatches square, mean,
 * add, rsqrt, mul, mul; and 'RmsNormGrad' as three programs in turn, where autodiff of the composition dispatches
 * about sixteen:
 * - dx = r·(dy·w) − x · r³ · mean(dy·w·x), one workgroup per row;
 * - dw = Σ_rows dy·x·r, a chunk kernel (each workgroup sums a chunk of rows, recomputing their r) and ColumnSum.
 * Only x and w are saved from the forward. A tfjs program has one output, so keeping r would take a kernel of its
 * own in the forward: inference (the teacher's forward) would pay a dispatch, and training would still run four.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RmsNormAttrs } from '../../ops/rmsNorm.ts';
import { disposeIntermediates, runProgram } from './program.ts';
import { input, rowLayout, RowProgram, rowUniforms, type RowLayout, ROW_START } from './rowLayout.ts';
import { rowChunks, sumChunks } from './columnSum.ts';

type Pass = 'forward' | 'inputGrad' | 'weightGradChunks';

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

/** Runs one pass's program on the kernel's inputs (x [rows, hidden] names the shape). */
function runPass(pass: Pass, inputs: tf.NamedTensorInfoMap, backend: tf.KernelBackend, eps: number): tf.TensorInfo {
  const [rows, hidden] = input(inputs, 'x').shape;
  const program = new RmsNormProgram(pass, rows, hidden, rowLayout(hidden));
  const data = INPUTS[pass].map((name) => input(inputs, name));
  return runProgram(backend, program, data, rowUniforms(eps, rowChunks(rows).rowsPerChunk));
}

/** 'RmsNorm': {x, weight} → y. */
export const rmsNormKernel: tf.KernelFunc = ({ inputs, backend, attrs }) =>
  runPass('forward', inputs, backend as tf.KernelBackend, (attrs as unknown as RmsNormAttrs).eps);

/** 'RmsNormGrad': {dy, x, weight} → [dx, dWeight]: the input gradient, the weight-gradient chunks, their ColumnSum. */
export const rmsNormGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const b = backend as tf.KernelBackend;
  const { eps } = attrs as unknown as RmsNormAttrs;
  const hidden = input(inputs, 'x').shape[1];
  const dx = runPass('inputGrad', inputs, b, eps);
  const chunks = runPass('weightGradChunks', inputs, b, eps);
  const dWeight = sumChunks(b, chunks, 0, hidden, rowLayout(hidden).components);
  disposeIntermediates(b, [chunks]);
  return [dx, dWeight];
};
