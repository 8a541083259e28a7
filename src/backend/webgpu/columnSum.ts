/**
 * The column reduction of a normalisation's parameter gradients, Σ_rows dy·x̂ (and Σ_rows dy for a bias), in two
 * steps: a row kernel sums each chunk of consecutive rows into one row of partial sums [chunks, width], then
 * ColumnSum adds those up. tfjs's composition reduces axis 0 with a transpose and a reduction per parameter; one
 * kernel over all rows would need every row's statistics before it, or leave all but a few lanes of the GPU idle.
 */
import * as tf from '@tensorflow/tfjs-core';
import { runProgram, type WebGPUProgram } from './program.ts';
import { vecType } from './rowLayout.ts';

/**
 * About one workgroup per streaming multiprocessor of an H200 (132): enough chunks to fill the GPU, few enough
 * that ColumnSum's loop over them stays short.
 */
const TARGET_CHUNKS = 128;

/** How the rows split into chunks: chunk c holds rows c·rowsPerChunk … (c + 1)·rowsPerChunk − 1 (the last fewer). */
export interface RowChunks {
  rowsPerChunk: number;
  chunks: number;
}

export function rowChunks(rows: number): RowChunks {
  const rowsPerChunk = Math.max(1, Math.ceil(rows / TARGET_CHUNKS));
  return { rowsPerChunk, chunks: Math.ceil(rows / rowsPerChunk) };
}

/** Columns per workgroup; the workgroup's 4 groups of lanes each take every fourth chunk. */
const COLUMNS = 64;
const CHUNK_LANES = 4;

/** partials [chunks, stride] → Σ_chunks partials[:, offset : offset + width]. */
class ColumnSumProgram implements WebGPUProgram {
  variableNames = ['partials'];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [COLUMNS * CHUNK_LANES, 1, 1];
  variableComponents: number[];
  outputComponent: number;
  uniforms = 'offset : i32,';

  constructor(
    width: number,
    private readonly components: 1 | 4,
  ) {
    this.outputShape = [width];
    this.dispatch = [Math.ceil(width / components / COLUMNS), 1, 1];
    this.variableComponents = [components];
    this.outputComponent = components;
    this.shaderKey = `columnSum_c${components}`;
  }

  getUserCode(): string {
    const vec = vecType(this.components);
    return `
      var<workgroup> chunkPartial : array<${vec}, ${COLUMNS * CHUNK_LANES}>;

      fn main(index : i32) {
        let tid = i32(localId.x);
        let column = (index / ${COLUMNS * CHUNK_LANES}) * ${COLUMNS} + tid % ${COLUMNS};
        let lane = tid / ${COLUMNS};
        let width = uniforms.outShape / ${this.components};
        let chunks = uniforms.partialsShape.x;
        let stride = uniforms.partialsShape.y / ${this.components};
        var sum = ${vec}(0.0);
        if (column < width) {
          for (var c = lane; c < chunks; c += ${CHUNK_LANES}) {
            sum += partials[c * stride + uniforms.offset + column];
          }
        }
        chunkPartial[tid] = sum;
        workgroupBarrier();
        if (lane == 0 && column < width) {
          result[column] = (chunkPartial[tid] + chunkPartial[tid + ${COLUMNS}])
            + (chunkPartial[tid + ${2 * COLUMNS}] + chunkPartial[tid + ${3 * COLUMNS}]);
        }
      }
    `;
  }
}

/**
 * Σ over the chunks (axis 0) of `partials` [chunks, stride], columns offset … offset + width − 1, as a [width]
 * output, run inside a kernelFunc of the webgpu backend; offset, width and stride must be multiples of `components`.
 */
export function sumChunks(backend: tf.KernelBackend, partials: tf.TensorInfo, offset: number, width: number, components: 1 | 4): tf.TensorInfo {
  const program = new ColumnSumProgram(width, components);
  return runProgram(backend, program, [partials], [{ type: 'int32', data: [offset / components] }]);
}
