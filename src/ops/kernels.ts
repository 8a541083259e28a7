/**
 * How an op in src/ops reaches a fused kernel, the tfjs way: the op names a kernel (tfjs-core's `kernel_names.ts`
 * role is played by the `*_KERNEL` constants of each op file), a backend registers a kernelFunc under that name with
 * `tf.registerKernel` (src/backend/webgpu/kernels.ts for webgpu, src/backend/cuda/ for cuda), and the op asks the
 * engine whether the CURRENT backend has it. When it has, the op runs it through the engine (so `tf.profile` sees it
 * like any other kernel); when not, the op runs its tfjs composition. No op knows which backends exist.
 */
import * as tf from '@tensorflow/tfjs-core';

/**
 * True when the current tfjs backend has a kernel registered under each of `kernelNames`. An op asks for its forward
 * and its Grad kernel together, so that a backend registering only one of them gets the composition, not a failure
 * in the backward pass.
 */
export function hasKernel(...kernelNames: string[]): boolean {
  const backend = tf.getBackend();
  return kernelNames.every((name) => tf.getKernel(name, backend) !== undefined);
}

/**
 * Runs the registered kernel `kernelName` through the engine. `T` is what the kernel returns: one tensor, or an
 * array when its kernelFunc returns several outputs (the Grad kernels).
 */
export function runKernel<T extends tf.Tensor | tf.Tensor[]>(kernelName: string, inputs: tf.NamedTensorMap, attrs: object = {}): T {
  return tf.engine().runKernel(kernelName, inputs, attrs as unknown as tf.NamedAttrMap) as T;
}
