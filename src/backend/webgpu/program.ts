/**
 * The one door through which our own WGSL programs reach tfjs's webgpu backend. A fused op is a tfjs kernel
 * registered for 'webgpu' only (so `tf.profile` and the engine see it like any other kernel); callers ask
 * `onWebgpu()` first and keep the plain tfjs composition on every other backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

export type { WebGPUProgram };

/** Uniform values in the order the program's `uniforms` string declares them (tfjs's ProgramUniform). */
export type ProgramUniforms = { type: 'float32' | 'int32' | 'uint32'; data: number[] }[];

/** True when tfjs's current backend is webgpu, i.e. when a fused kernel registered here can run. */
export function onWebgpu(): boolean {
  return tf.getBackend() === 'webgpu';
}

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
 * registration). Call from a `register…` function that selectBackend runs.
 */
export function registerWebgpuKernel(kernelName: string, kernelFunc: tf.KernelFunc): void {
  if (tf.getKernel(kernelName, 'webgpu')) return;
  tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc });
}

/** Runs a registered kernel through the engine (so it is profiled and its output tracked). */
export function runKernel<T extends tf.Tensor>(kernelName: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}): T {
  return tf.engine().runKernel(kernelName, inputs, attrs as unknown as tf.NamedAttrMap) as T;
}
