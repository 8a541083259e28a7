/**
 * The one door through which our own WGSL programs reach tfjs's webgpu backend. A fused op's kernel is a tfjs
 * kernel registered for 'webgpu' under the name its op in src/ops defines (kernels.ts registers them all), so
 * `tf.profile` and the engine see it like any other kernel; the op runs its tfjs composition on backends without it.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

export type { WebGPUProgram };

/** Uniform values in the order the program's `uniforms` string declares them (tfjs's ProgramUniform). */
export type ProgramUniforms = { type: 'float32' | 'int32' | 'uint32'; data: number[] }[];

/** Runs `program` on the webgpu backend that called a kernelFunc; the output is a new float32 (or `dtype`) tensor. */
export function runProgram(
  backend: tf.KernelBackend,
  program: WebGPUProgram,
  inputs: tf.TensorInfo[],
  uniforms: ProgramUniforms = [],
  dtype: tf.DataType = 'float32',
): tf.TensorInfo {
  return (backend as unknown as WebGPUBackend).runWebGPUProgram(program, inputs, dtype, uniforms);
}

/**
 * Registers `kernelFunc` under `kernelName` for the webgpu backend, once per process (tfjs warns on a second
 * registration). Called by registerWebgpuKernels, which selectBackend runs.
 */
export function registerWebgpuKernel(kernelName: string, kernelFunc: tf.KernelFunc): void {
  if (tf.getKernel(kernelName, 'webgpu')) return;
  tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc });
}

/** Frees the intermediate outputs of a kernelFunc that runs several programs and returns only the last ones. */
export function disposeIntermediates(backend: tf.KernelBackend, intermediates: tf.TensorInfo[]): void {
  for (const t of intermediates) backend.disposeData(t.dataId);
}
