/**
 * How one workgroup holds one row of a [rows, hidden] tensor, the layout the normalisations' kernels share: each
 * lane keeps `slots` vectors of the row in registers (so a row is read from memory once however many passes the
 * kernel makes over it), and the lanes sum their partial results through workgroup memory.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { ProgramUniforms, WebGPUProgram } from './program.ts';

/** The lanes of one workgroup over one row of `hidden` float32 values. */
export interface RowLayout {
  /** 4 when hidden is a multiple of 4 (lanes load vec4<f32>, a quarter of the loads); 1 otherwise. */
  components: 1 | 4;
  /** Invocations per workgroup: a power of two, as the tree reduction halves it. */
  lanes: number;
  /** Vectors each lane holds: lane t holds vectors t, t + lanes, t + 2·lanes, … of the row. */
  slots: number;
}

/** Most lanes a workgroup gets; WebGPU guarantees 256 invocations per workgroup. */
const MAX_LANES = 256;

export function rowLayout(hidden: number): RowLayout {
  const components = hidden % 4 === 0 ? 4 : 1;
  const vectors = hidden / components;
  // About four vectors per lane: 64 lanes for hidden 768 (192 vec4), 256 for 4096 (1,024 vec4). Fewer lanes per
  // row would leave reductions to few threads; more would leave lanes idle at the widths the models use.
  let lanes = 64;
  while (lanes < MAX_LANES && lanes * 4 < vectors) lanes *= 2;
  return { components, lanes, slots: Math.ceil(vectors / lanes) };
}

/** Everything in the layout changes the generated code, so it all goes into the shader key. */
export function rowLayoutKey(l: RowLayout): string {
  return `c${l.components}_l${l.lanes}_s${l.slots}`;
}

/** The WGSL type of one vector of the layout. */
export function vecType(components: 1 | 4): string {
  return components === 4 ? 'vec4<f32>' : 'f32';
}

/**
 * WGSL shared by the row kernels: `Vec` (one vector of the row), the constants LANES, SLOTS and COMPONENTS,
 * `lanesSum(v)` (the sum of one vector's components) and `rowSum(tid, v)`, the sum over the workgroup's lanes of
 * two values at once. rowSum holds barriers, so it must be called in uniform control flow: every lane of the
 * workgroup, the same number of times.
 */
export function rowWgsl(l: RowLayout): string {
  return `
    alias Vec = ${vecType(l.components)};
    const LANES = ${l.lanes};
    const SLOTS = ${l.slots};
    const COMPONENTS = ${l.components};
    var<workgroup> rowPartial : array<vec2<f32>, ${l.lanes}>;

    fn lanesSum(v : Vec) -> f32 {
      return ${l.components === 4 ? 'dot(v, Vec(1.0))' : 'v'};
    }

    fn rowSum(tid : i32, v : vec2<f32>) -> vec2<f32> {
      rowPartial[tid] = v;
      workgroupBarrier();
      for (var stride = LANES / 2; stride > 0; stride = stride / 2) {
        if (tid < stride) { rowPartial[tid] = rowPartial[tid] + rowPartial[tid + stride]; }
        workgroupBarrier();
      }
      let total = rowPartial[0];
      // Every lane has read the total before a later rowSum overwrites rowPartial[0].
      workgroupBarrier();
      return total;
    }
  `;
}

/**
 * A program of the normalisations' row kernels: one workgroup per row of the output (or per chunk of rows, when
 * the output holds one row per chunk), in the layout of `hidden`, every input read as vectors of that layout. The
 * uniforms are eps and the rows per chunk (the chunk kernels' loop bound).
 */
export abstract class RowProgram implements WebGPUProgram {
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  variableComponents: number[];
  outputComponent: number;
  uniforms = 'eps : f32, rowsPerChunk : i32,';

  constructor(
    readonly variableNames: string[],
    outputShape: number[],
    protected readonly layout: RowLayout,
    key: string,
  ) {
    this.outputShape = outputShape;
    this.shaderKey = `${key}_${rowLayoutKey(layout)}`;
    // A flat layout makes tfjs call main(index) with index = workgroup · LANES + lane, also when it reshapes a
    // dispatch past the per-dimension limit into two dimensions.
    this.dispatchLayout = { x: outputShape.map((_, i) => i) };
    this.dispatch = [outputShape[0], 1, 1];
    this.workgroupSize = [layout.lanes, 1, 1];
    this.variableComponents = variableNames.map(() => layout.components);
    this.outputComponent = layout.components;
  }

  /** The WGSL of main's body, after tid, rows, hidden and n (vectors per row) are defined. */
  protected abstract body(): string;

  getUserCode(): string {
    return `
      ${rowWgsl(this.layout)}

      fn main(index : i32) {
        let tid = i32(localId.x);
        let rows = uniforms.xShape.x;
        let hidden = uniforms.xShape.y;
        let n = hidden / COMPONENTS;
        ${this.body()}
      }
    `;
  }
}

/** Rows past the end (spare workgroups of a reshaped dispatch) redo the last row, as barriers need every lane, and write nothing. */
export const ROW_START = `
        let live = index / LANES < rows;
        let base = min(index / LANES, rows - 1) * n;`;

/** The uniform values of a RowProgram, in the order its `uniforms` declares them. */
export function rowUniforms(eps: number, rowsPerChunk: number): ProgramUniforms {
  return [
    { type: 'float32', data: [eps] },
    { type: 'int32', data: [rowsPerChunk] },
  ];
}

/** A kernel's named input, which the kernel's own caller always passes. */
export function input(inputs: tf.NamedTensorInfoMap, name: string): tf.TensorInfo {
  const t = inputs[name];
  if (!t) throw new Error(`kernel input ${name} missing`);
  return t;
}
