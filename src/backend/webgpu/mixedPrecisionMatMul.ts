/**
 * `--precision bf16-mixed` on webgpu: tfjs's BatchMatMul kernel is wrapped so that, while mixed precision is on,
 * every matmul whose shape tiles evenly runs on tensor cores (SubgroupMatMulProgram, f16 operands, f32
 * accumulation); everything else, and everything while it is off, runs tfjs's own fp32 kernel. Wrapping the kernel
 * (rather than calling a new op) reaches the matmuls inside tfjs's gradients too, which is where two thirds of a
 * training step's FLOPs are.
 */
import * as tf from '@tensorflow/tfjs-core';
import { webgpuCapabilities } from './device.ts';
import { runProgram } from './program.ts';
import { SubgroupMatMulProgram, TILE_K, TILE_M, TILE_N } from './subgroupMatMul.ts';

/** NeMo's trainer.precision names: '32' is fp32 throughout; the mixed ones put matmul operands in f16. */
export type Precision = '32' | 'bf16-mixed' | '16-mixed';
export const PRECISIONS: Precision[] = ['32', 'bf16-mixed', '16-mixed'];

let mixed = false;
let counts = { tensorCore: 0, fp32: 0 };

/** Why mixed precision cannot run on the current webgpu device, or null when it can. */
export function mixedPrecisionUnavailable(): string | null {
  const caps = webgpuCapabilities();
  if (!caps.shaderF16) return 'the WebGPU device has no shader-f16';
  if (!caps.subgroupMatrixF16.some((c) => c.M === 16 && c.N === 16 && c.K === 16)) {
    return 'the WebGPU adapter offers no f16 16×16×16 subgroup-matrix tiles (Dawn feature chromium-experimental-subgroup-matrix; NVIDIA exposes it through Vulkan cooperative matrices)';
  }
  if (caps.subgroupSize !== 32) return `the adapter's subgroup size is ${caps.subgroupSize ?? 'variable'}, the tensor-core matmul is written for 32`;
  return null;
}

/**
 * Turns tensor-core matmuls on or off for the current webgpu backend. Throws with the reason when asked for mixed
 * precision on a device that cannot do it (the caller decides whether to fall back).
 */
export function setMatMulPrecision(precision: Precision): void {
  if (precision !== '32') {
    const why = mixedPrecisionUnavailable();
    if (why) throw new Error(`--precision ${precision} needs tensor-core matmuls on webgpu, but ${why}`);
  }
  registerMixedPrecisionMatMul();
  mixed = precision !== '32';
}

/** How many matmuls took each path since the last call (for the bench and the tests, which must see the path taken). */
export function takeMatMulCounts(): { tensorCore: number; fp32: number } {
  const c = counts;
  counts = { tensorCore: 0, fp32: 0 };
  return c;
}

interface Plan {
  batch: number;
  m: number;
  n: number;
  k: number;
  strideA: number;
  strideB: number;
  outShape: number[];
}

/** The tiled shape of a batched matmul, or null when it does not tile evenly or broadcasts in a way we don't do. */
export function planMatMul(aShape: number[], bShape: number[], transposeA: boolean, transposeB: boolean): Plan | null {
  if (aShape.length < 2 || aShape.length !== bShape.length) return null;
  const r = aShape.length;
  const m = transposeA ? aShape[r - 1] : aShape[r - 2];
  const k = transposeA ? aShape[r - 2] : aShape[r - 1];
  const kB = transposeB ? bShape[r - 1] : bShape[r - 2];
  const n = transposeB ? bShape[r - 2] : bShape[r - 1];
  if (k !== kB || m % TILE_M || n % TILE_N || k % TILE_K || k === 0) return null;
  const outerA = aShape.slice(0, r - 2);
  const outerB = bShape.slice(0, r - 2);
  const batchA = outerA.reduce((p, d) => p * d, 1);
  const batchB = outerB.reduce((p, d) => p * d, 1);
  const same = outerA.every((d, i) => d === outerB[i]);
  if (!same && batchA !== 1 && batchB !== 1) return null;
  const outer = batchA >= batchB ? outerA : outerB;
  return {
    batch: Math.max(batchA, batchB),
    m,
    n,
    k,
    strideA: batchA === 1 ? 0 : m * k,
    strideB: batchB === 1 ? 0 : k * n,
    outShape: [...outer, m, n],
  };
}

/**
 * Where the tensor-core kernel beats tfjs's fp32 kernels, measured on the H200 with config M's shapes
 * (benchmarks/profile/matmul.ts, DISTILL_FORCE_TENSOR_CORES=1): x·Wᵀ 1.33–2.0× (the forward projections), the LM
 * head's h·Eᵀ 1.22×, batched q·kᵀ 1.26×; but dY·W 0.99× and dYᵀ·x 0.55×, where tfjs's own kernels for those layouts
 * are good (12–16 TFLOP/s) and ours tops out near 9. So only products with B transposed and A not take the tensor
 * cores, until the kernel wins everywhere.
 */
export function tensorCoresPay(transposeA: boolean, transposeB: boolean): boolean {
  return forceTensorCores || (transposeB && !transposeA);
}

let forceTensorCores = process.env.DISTILL_FORCE_TENSOR_CORES === '1';

/** Sends every tiled product to the tensor cores, whatever the layout: for the tests and the matmul benchmark. */
export function setForceTensorCores(on: boolean): void {
  forceTensorCores = on;
}

let registered = false;

function registerMixedPrecisionMatMul(): void {
  if (registered) return;
  const fp32 = tf.getKernel(tf.BatchMatMul, 'webgpu');
  if (!fp32) throw new Error('tfjs-backend-webgpu has no BatchMatMul kernel to wrap');
  tf.unregisterKernel(tf.BatchMatMul, 'webgpu');
  tf.registerKernel({
    kernelName: tf.BatchMatMul,
    backendName: 'webgpu',
    setupFunc: fp32.setupFunc,
    disposeFunc: fp32.disposeFunc,
    kernelFunc: (args) => {
      const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
      const plan =
        mixed && a.dtype === 'float32' && b.dtype === 'float32' && tensorCoresPay(transposeA, transposeB)
          ? planMatMul(a.shape, b.shape, transposeA, transposeB)
          : null;
      if (!plan) {
        counts.fp32 += 1;
        return fp32.kernelFunc(args);
      }
      counts.tensorCore += 1;
      const program = new SubgroupMatMulProgram(plan.outShape, plan.batch, plan.m, plan.n, transposeA, transposeB);
      return runProgram(
        args.backend as tf.KernelBackend,
        program,
        [a, b],
        [
          { type: 'int32', data: [plan.m] },
          { type: 'int32', data: [plan.n] },
          { type: 'int32', data: [plan.k] },
          { type: 'int32', data: [plan.strideA] },
          { type: 'int32', data: [plan.strideB] },
        ],
      );
    },
  });
  registered = true;
}
