/**
 * Gradients of Sum and Mean that stay on the device. tfjs's own multiply the upstream gradient by `ones(x.shape)`,
 * which it fills on the host and uploads: on webgpu every RMSNorm, LayerNorm and reduction in a backward pass
 * allocated a staging buffer and copied a [tokens, hidden] array of ones (measured on the H200 for config M: the
 * host filling ones and creating buffers took more time per step than all the GPU kernels together). Broadcasting
 * the reshaped gradient gives the same values exactly (a product with 1 is exact) with one device op.
 */
import * as tf from '@tensorflow/tfjs-core';

function expandedShape(x: tf.Tensor, axis: number | number[]): { shape: number[]; size: number } {
  const axes = tf.util.parseAxisParam(axis, x.shape);
  const shape = x.shape.slice();
  let size = 1;
  for (const a of axes) {
    size *= shape[a];
    shape[a] = 1;
  }
  return { shape, size };
}

export function registerReductionGradients(): void {
  tf.registerGradient({
    kernelName: tf.Sum,
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved;
      const { shape } = expandedShape(x, (attrs as unknown as tf.SumAttrs).axis);
      return { x: () => tf.broadcastTo(tf.reshape(dy as tf.Tensor, shape), x.shape) };
    },
  });
  tf.registerGradient({
    kernelName: tf.Mean,
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved;
      const { shape, size } = expandedShape(x, (attrs as unknown as tf.MeanAttrs).axis);
      return { x: () => tf.div(tf.broadcastTo(tf.reshape(dy as tf.Tensor, shape), x.shape), size) };
    },
  });
}
