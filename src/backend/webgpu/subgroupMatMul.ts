/**
 * Batched matmul on tensor cores through WGSL subgroup matrices (Dawn's chromium_experimental_subgroup_matrix):
 * f32 tensors in memory, each 64×32 / 32×64 slab of the operands converted to f16 in workgroup memory, 16×16×16
 * f16 products accumulated in f32. This is the operand half of mixed precision (`--precision bf16-mixed`): master
 * weights, optimizer state, activations in memory and the loss all stay f32.
 *
 * f16 spans only 6e-8 to 65504, and KD gradients reach 1e-9 (a mean over 4,096 tokens of probability
 * differences), so casting would flush them to zero. Instead each slab is scaled by a power of two that puts its
 * largest magnitude in [2^14, 2^15) before the cast, and the f32 accumulator is kept in the units of the latest
 * slab (rescaled by a power of two when they change, divided out at the end). Powers of two are exact, so the only
 * error is f16's 11-bit rounding of each operand: about 1e-3 relative on a dot product, against PyTorch's own
 * bf16's 8 bits. Callers need no loss scaling.
 *
 * Tiles: a workgroup is one subgroup of 32 lanes computing a 64×64 block of one batch entry as 4×4 result matrices.
 * One subgroup, because this Dawn's Tint requires subgroup-matrix loads and stores to have workgroup-uniform offsets
 * and to sit in workgroup-uniform control flow (tried: four subgroups branching to constant offsets is refused), and
 * with several subgroups per workgroup each needs its own offset. Operands are read as vec4 along their contiguous
 * axis; a transposed operand is written to workgroup memory column-major and loaded as such, so every global read
 * and workgroup write is contiguous. Shapes that are not multiples of the tile, or adapters without f16 16×16×16
 * tiles and 32-lane subgroups, use tfjs's own fp32 matmul.
 */
import type { WebGPUProgram } from './program.ts';

export const TILE_M = 64;
export const TILE_N = 64;
export const TILE_K = 16;
const LANES = 32;

export class SubgroupMatMulProgram implements WebGPUProgram {
  readonly variableNames = ['A', 'B'];
  readonly variableComponents = [4, 4];
  readonly outputShape: number[];
  readonly shaderKey: string;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [LANES, 1, 1];
  readonly uniforms = 'dimM : i32, dimN : i32, dimK : i32, batchStrideA : i32, batchStrideB : i32,';

  constructor(
    outputShape: number[],
    readonly batch: number,
    readonly m: number,
    readonly n: number,
    readonly transposeA: boolean,
    readonly transposeB: boolean,
  ) {
    this.outputShape = outputShape;
    this.dispatchLayout = { x: outputShape.map((_, i) => i) };
    this.dispatch = [n / TILE_N, m / TILE_M, batch];
    this.shaderKey = `subgroupMatMul_${transposeA}_${transposeB}`;
  }

  getUserCode(): string {
    const TM = TILE_M, TN = TILE_N, TK = TILE_K;
    const vecs = (TM * TK) / 4 / LANES; // vec4 reads per lane per slab, for A and (TK·TN = TM·TK) for B
    // Global vec4 index g and the workgroup offset w of its first element, per layout. A tile: row-major [TM][TK],
    // or column-major [TK][TM] when A is transposed; B tile: row-major [TK][TN], or column-major [TN][TK].
    const addrA = this.transposeA
      ? `let kr = e / ${TM / 4}u; let m4 = e % ${TM / 4}u; let g = (baseA + (k0 + kr) * M + row0) / 4u + m4; let w = kr * ${TM}u + m4 * 4u;`
      : `let r = e / ${TK / 4}u; let k4 = e % ${TK / 4}u; let g = (baseA + (row0 + r) * K + k0) / 4u + k4; let w = r * ${TK}u + k4 * 4u;`;
    const addrB = this.transposeB
      ? `let nr = e / ${TK / 4}u; let k4 = e % ${TK / 4}u; let g = (baseB + (col0 + nr) * K + k0) / 4u + k4; let w = nr * ${TK}u + k4 * 4u;`
      : `let kr = e / ${TN / 4}u; let n4 = e % ${TN / 4}u; let g = (baseB + (k0 + kr) * N + col0) / 4u + n4; let w = kr * ${TN}u + n4 * 4u;`;
    const left = (i: number): string => this.transposeA
      ? `subgroupMatrixLoad<Left>(&tileA, ${i * 16}u, true, ${TM}u)`
      : `subgroupMatrixLoad<Left>(&tileA, ${i * 16 * TK}u, false, ${TK}u)`;
    const right = (j: number): string => this.transposeB
      ? `subgroupMatrixLoad<Right>(&tileB, ${j * 16 * TK}u, true, ${TK}u)`
      : `subgroupMatrixLoad<Right>(&tileB, ${j * 16}u, false, ${TN}u)`;
    const four = [0, 1, 2, 3];
    const lefts = four.map((i) => `let l${i} = ${left(i)};`).join('\n    ');
    const rights = four.map((j) => `let r${j} = ${right(j)};`).join('\n    ');
    const mmas = four.flatMap((i) => four.map((j) =>
      `acc[${i * 4 + j}] = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, subgroupMatrixScalarMultiply(acc[${i * 4 + j}], ratio));`)).join('\n    ');
    const stores = four.flatMap((i) => four.map((j) =>
      `subgroupMatrixStore(&result, out0 + ${i * 16}u * N + ${j * 16}u, subgroupMatrixScalarMultiply(acc[${i * 4 + j}], back), false, N);`)).join('\n  ');
    return `
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);

alias Left = subgroup_matrix_left<f16, 16, 16>;
alias Right = subgroup_matrix_right<f16, 16, 16>;
alias Acc = subgroup_matrix_result<f32, 16, 16>;

// Declared before the f16 tiles on purpose: declared after them, on the H200's Vulkan driver through Dawn, writes
// to these scalars corrupted the first elements of tileB (measured: a ones×ones product lost one k-row).
var<workgroup> slabExponents : vec2<i32>;
var<workgroup> tileOrigin : vec3<u32>;
var<workgroup> tileA : array<f16, ${TM * TK}>;
var<workgroup> tileB : array<f16, ${TK * TN}>;

// The power of two that brings m into [2^14, 2^15); clamped so that units stay far inside f32's range.
fn slabExponent(m : f32) -> i32 {
  if (m == 0.0) { return 0; }
  return clamp(15 - frexp(m).exp, -30, 30);
}

fn maxAbs4(v : vec4<f32>) -> f32 {
  let a = abs(v);
  return max(max(a.x, a.y), max(a.z, a.w));
}

fn main(index : i32) {
  let M = u32(uniforms.dimM);
  let N = u32(uniforms.dimN);
  let K = u32(uniforms.dimK);
  let lane = localIndex;
  // tfjs passes the workgroup id through a private variable, which Tint's uniformity analysis cannot see through;
  // read back through workgroupUniformLoad it is provably uniform, as subgroup-matrix offsets must be.
  if (lane == 0u) {
    tileOrigin = workgroupId;
  }
  let wid = workgroupUniformLoad(&tileOrigin);
  let col0 = wid.x * ${TN}u;
  let row0 = wid.y * ${TM}u;
  let baseA = wid.z * u32(uniforms.batchStrideA);
  let baseB = wid.z * u32(uniforms.batchStrideB);

  var acc : array<Acc, 16>;
  var unit = 0;
  for (var k0 = 0u; k0 < K; k0 += ${TK}u) {
    var a : array<vec4<f32>, ${vecs}>;
    var b : array<vec4<f32>, ${vecs}>;
    var mA = 0.0;
    var mB = 0.0;
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${LANES}u + lane;
      ${addrA}
      a[i] = A[g];
      mA = max(mA, maxAbs4(a[i]));
    }
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${LANES}u + lane;
      ${addrB}
      b[i] = B[g];
      mB = max(mB, maxAbs4(b[i]));
    }
    mA = subgroupMax(mA);
    mB = subgroupMax(mB);
    if (lane == 0u) {
      slabExponents = vec2<i32>(slabExponent(mA), slabExponent(mB));
    }
    // Also the barrier that keeps this slab's tile writes below from overtaking the last slab's matrix loads.
    let ex = workgroupUniformLoad(&slabExponents);
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${LANES}u + lane;
      ${addrA}
      let v = vec4<f16>(ldexp(a[i], vec4<i32>(ex.x)));
      tileA[w] = v.x; tileA[w + 1u] = v.y; tileA[w + 2u] = v.z; tileA[w + 3u] = v.w;
    }
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${LANES}u + lane;
      ${addrB}
      let v = vec4<f16>(ldexp(b[i], vec4<i32>(ex.y)));
      tileB[w] = v.x; tileB[w + 1u] = v.y; tileB[w + 2u] = v.z; tileB[w + 3u] = v.w;
    }
    workgroupBarrier();
    // Re-express the running sums in this slab's units before adding its products.
    let ratio = ldexp(1.0, ex.x + ex.y - unit);
    unit = ex.x + ex.y;
    ${lefts}
    ${rights}
    ${mmas}
  }
  let back = ldexp(1.0, -unit);
  let out0 = wid.z * M * N + row0 * N + col0;
  ${stores}
}
`;
  }
}
