/**
 * Batched matmul on tensor cores through WGSL subgroup matrices (Dawn's chromium_experimental_subgroup_matrix):
 * f32 tensors in memory, each 128×32 / 32×128 slab of the operands converted to f16 in workgroup memory, 16×16×16
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
 * Tiles: a workgroup of four subgroups (32 lanes each) computes a 128×128 block of one batch entry, each subgroup a
 * 64×64 quarter as 4×4 result matrices, from slabs of 128×32 and 32×128 operands shared in workgroup memory; the
 * next slab's global reads are issued before this slab's products. Tint
 * accepts subgroup-matrix offsets that differ between subgroups only when derived from the `subgroup_id` builtin
 * (with the subgroup_uniformity language feature), which tfjs's entry point does not pass: `main` declares a
 * `subgroupIndex` parameter and device.ts's passSubgroupId forwards the builtin to it. Operands are read as vec4
 * along their contiguous axis; a transposed operand is written to workgroup memory column-major and loaded as such,
 * so every global read and workgroup write is contiguous. Shapes that are not multiples of the tile, or adapters
 * without f16 16×16×16 tiles and 32-lane subgroups, use tfjs's own fp32 matmul.
 *
 * Measured on the H200 (benchmarks/profile/matmul.ts, config M's shapes): 6–9 TFLOP/s, against tfjs's fp32 kernels'
 * 3–16. Without the per-slab scaling the same loop reached only 8.1–8.6 TFLOP/s (scratch experiment), and 32-wide
 * slabs beat 16-wide ones, so the ceiling is in how this Dawn and driver run subgroup matrices from workgroup
 * memory, not in the scaling; a single-subgroup 64×64 variant was no faster.
 */
import type { WebGPUProgram } from './program.ts';

export const TILE_M = 128;
export const TILE_N = 128;
export const TILE_K = 32;
const LANES = 32;
const THREADS = 4 * LANES;

export class SubgroupMatMulProgram implements WebGPUProgram {
  readonly variableNames = ['A', 'B'];
  readonly variableComponents = [4, 4];
  readonly outputShape: number[];
  readonly shaderKey: string;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [THREADS, 1, 1];
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
    const TM = TILE_M,
      TN = TILE_N,
      TK = TILE_K;
    const vecs = (TM * TK) / 4 / THREADS; // vec4 reads per lane per slab, for A and (TK·TN = TM·TK) for B
    // Global vec4 index g and the workgroup offset w of its first element, per layout. A tile: row-major [TM][TK],
    // or column-major [TK][TM] when A is transposed; B tile: row-major [TK][TN], or column-major [TN][TK].
    const addrA = this.transposeA
      ? `let kr = e / ${TM / 4}u; let m4 = e % ${TM / 4}u; let g = (baseA + (k0 + kr) * M + row0) / 4u + m4; let w = kr * ${TM}u + m4 * 4u;`
      : `let r = e / ${TK / 4}u; let k4 = e % ${TK / 4}u; let g = (baseA + (row0 + r) * K + k0) / 4u + k4; let w = r * ${TK}u + k4 * 4u;`;
    const addrB = this.transposeB
      ? `let nr = e / ${TK / 4}u; let k4 = e % ${TK / 4}u; let g = (baseB + (col0 + nr) * K + k0) / 4u + k4; let w = nr * ${TK}u + k4 * 4u;`
      : `let kr = e / ${TN / 4}u; let n4 = e % ${TN / 4}u; let g = (baseB + (k0 + kr) * N + col0) / 4u + n4; let w = kr * ${TN}u + n4 * 4u;`;
    // This subgroup's quarter: rows wr·64.., columns wc·64..; offsets of its first left and right matrices.
    const leftBase = this.transposeA ? 'wr * 64u' : `wr * 64u * ${TK}u`;
    const leftStep = this.transposeA ? 16 : 16 * TK;
    const rightBase = this.transposeB ? `wc * 64u * ${TK}u` : 'wc * 64u';
    const rightStep = this.transposeB ? 16 * TK : 16;
    // The k offset of a 16-wide step kk inside the slab, per layout.
    const leftK = (kk: number): number => (this.transposeA ? kk * TM : kk);
    const rightK = (kk: number): number => (this.transposeB ? kk : kk * TN);
    const left = (i: number, kk: number): string =>
      `subgroupMatrixLoad<Left>(&tileA, leftBase + ${i * leftStep + leftK(kk)}u, ${this.transposeA}, ${this.transposeA ? TM : TK}u)`;
    const right = (j: number, kk: number): string =>
      `subgroupMatrixLoad<Right>(&tileB, rightBase + ${j * rightStep + rightK(kk)}u, ${this.transposeB}, ${this.transposeB ? TK : TN}u)`;
    const loadSlab = (ks: string): string => `for (var i = 0u; i < ${vecs}u; i++) {
        let e = i * ${THREADS}u + t;
        let k0 = ${ks};
        ${addrA}
        a[i] = A[g];
      }
      for (var i = 0u; i < ${vecs}u; i++) {
        let e = i * ${THREADS}u + t;
        let k0 = ${ks};
        ${addrB}
        b[i] = B[g];
      }`;
    const four = [0, 1, 2, 3];
    const steps = Array.from({ length: TK / 16 }, (_, s) => s * 16);
    const products = steps
      .map((kk) =>
        [
          ...four.map((i) => `let l${i}_${kk} = ${left(i, kk)};`),
          ...four.map((j) => `let r${j}_${kk} = ${right(j, kk)};`),
          ...four.flatMap((i) =>
            four.map((j) => {
              const q = i * 4 + j;
              const prior = kk === 0 ? `subgroupMatrixScalarMultiply(acc[${q}], ratio)` : `acc[${q}]`;
              return `acc[${q}] = subgroupMatrixMultiplyAccumulate(l${i}_${kk}, r${j}_${kk}, ${prior});`;
            }),
          ),
        ].join('\n    '),
      )
      .join('\n    ');
    const stores = four
      .flatMap((i) =>
        four.map((j) => `subgroupMatrixStore(&result, out0 + ${i * 16}u * N + ${j * 16}u, subgroupMatrixScalarMultiply(acc[${i * 4 + j}], back), false, N);`),
      )
      .join('\n  ');
    return `
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
requires subgroup_id, subgroup_uniformity;
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);

alias Left = subgroup_matrix_left<f16, 16, 16>;
alias Right = subgroup_matrix_right<f16, 16, 16>;
alias Acc = subgroup_matrix_result<f32, 16, 16>;

// Declared before the f16 tiles on purpose: declared after them, on the H200's Vulkan driver through Dawn, writes
// to these scalars corrupted the first elements of tileB (measured: a ones×ones product lost one k-row).
var<workgroup> tileOrigin : vec3<u32>;
var<workgroup> partialMax : array<vec2<f32>, 4>;
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

fn main(index : i32, subgroupIndex : u32) {
  let M = u32(uniforms.dimM);
  let N = u32(uniforms.dimN);
  let K = u32(uniforms.dimK);
  let t = localIndex;
  let wr = subgroupIndex / 2u;
  let wc = subgroupIndex % 2u;
  // tfjs passes the workgroup id through a private variable, which Tint's uniformity analysis cannot see through;
  // read back through workgroupUniformLoad it is provably uniform, as subgroup-matrix offsets must be.
  if (t == 0u) {
    tileOrigin = workgroupId;
  }
  let wid = workgroupUniformLoad(&tileOrigin);
  let col0 = wid.x * ${TN}u;
  let row0 = wid.y * ${TM}u;
  let baseA = wid.z * u32(uniforms.batchStrideA);
  let baseB = wid.z * u32(uniforms.batchStrideB);
  let leftBase = ${leftBase};
  let rightBase = ${rightBase};

  var acc : array<Acc, 16>;
  var unit = 0;
  var a : array<vec4<f32>, ${vecs}>;
  var b : array<vec4<f32>, ${vecs}>;
  ${loadSlab('0u')}
  for (var k0 = 0u; k0 < K; k0 += ${TK}u) {
    var mA = 0.0;
    var mB = 0.0;
    for (var i = 0u; i < ${vecs}u; i++) {
      mA = max(mA, maxAbs4(a[i]));
      mB = max(mB, maxAbs4(b[i]));
    }
    let m2 = vec2<f32>(subgroupMax(mA), subgroupMax(mB));
    if (t % ${LANES}u == 0u) {
      partialMax[subgroupIndex] = m2;
    }
    // Its barrier also keeps this slab's tile writes below from overtaking the last slab's matrix loads.
    let pm = workgroupUniformLoad(&partialMax);
    let mAll = max(max(pm[0], pm[1]), max(pm[2], pm[3]));
    let eA = slabExponent(mAll.x);
    let eB = slabExponent(mAll.y);
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${THREADS}u + t;
      ${addrA}
      let v = vec4<f16>(ldexp(a[i], vec4<i32>(eA)));
      tileA[w] = v.x; tileA[w + 1u] = v.y; tileA[w + 2u] = v.z; tileA[w + 3u] = v.w;
    }
    for (var i = 0u; i < ${vecs}u; i++) {
      let e = i * ${THREADS}u + t;
      ${addrB}
      let v = vec4<f16>(ldexp(b[i], vec4<i32>(eB)));
      tileB[w] = v.x; tileB[w + 1u] = v.y; tileB[w + 2u] = v.z; tileB[w + 3u] = v.w;
    }
    workgroupBarrier();
    // The next slab's global reads are issued now, so that their latency hides behind this slab's products.
    if (k0 + ${TK}u < K) {
      ${loadSlab(`k0 + ${TK}u`)}
    }
    // Re-express the running sums in this slab's units before adding its products.
    let ratio = ldexp(1.0, eA + eB - unit);
    unit = eA + eB;
    ${products}
  }
  let back = ldexp(1.0, -unit);
  let out0 = wid.z * M * N + (row0 + wr * 64u) * N + col0 + wc * 64u;
  ${stores}
}
`;
  }
}
