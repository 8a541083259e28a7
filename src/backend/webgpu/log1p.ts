/**
 * An accurate Log1p for webgpu. tfjs-webgpu computes log1p(a) as log(1.0 + a), which rounds 1 + a first and so
 * loses every digit below 2^-24 of a: relative error 2e-5 at a = -3e-3, 3% at 1e-6 (tfjs's cpu and wasm use
 * Math.log1p). The top-K ghost KL (losses/sparseTargets.ts) takes log1p of one minus the top-K mass and is a
 * difference of such logs, so on webgpu it missed PyTorch's value by 1.3e-5 relative.
 */
import * as tf from '@tensorflow/tfjs-core';
import { runProgram, type WebGPUProgram } from './program.ts';

/**
 * log1p(a) = 2·atanh(s), s = a / (2 + a), by its odd series for |a| < 0.5 (|s| < 1/3: the terms to s^17 reach
 * float32 precision, and no log near 1 is taken, where WGSL allows 2^-21 absolute error); log(1 + a) elsewhere.
 */
class Log1pProgram implements WebGPUProgram {
  variableNames = ['A'];
  outputShape: number[];
  shaderKey = 'distillLog1p';
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [64, 1, 1];
  size = true;

  constructor(shape: number[]) {
    this.outputShape = shape;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    this.dispatch = [Math.ceil(shape.reduce((a, d) => a * d, 1) / this.workgroupSize[0]), 1, 1];
  }

  getUserCode(): string {
    return `
      fn log1pAccurate(a : f32) -> f32 {
        if (isnan(a)) { return a; }
        if (abs(a) < 0.5) {
          let s = a / (2.0 + a);
          let s2 = s * s;
          var p = 1.0 / 17.0;
          p = p * s2 + 1.0 / 15.0;
          p = p * s2 + 1.0 / 13.0;
          p = p * s2 + 1.0 / 11.0;
          p = p * s2 + 1.0 / 9.0;
          p = p * s2 + 1.0 / 7.0;
          p = p * s2 + 1.0 / 5.0;
          p = p * s2 + 1.0 / 3.0;
          p = p * s2 + 1.0;
          return 2.0 * s * p;
        }
        return log(1.0 + a);
      }
      fn main(index : i32) {
        if (index < uniforms.size) {
          setOutputAtIndex(index, log1pAccurate(A[index]));
        }
      }
    `;
  }
}

let registered = false;

/** Replaces tfjs-webgpu's Log1p kernel with the accurate one, once per process (selectBackend calls it). */
export function registerAccurateLog1p(): void {
  if (registered) return;
  registered = true;
  tf.unregisterKernel(tf.Log1p, 'webgpu');
  tf.registerKernel({
    kernelName: tf.Log1p,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      return runProgram(backend as tf.KernelBackend, new Log1pProgram(x.shape), [x]);
    },
  });
}
