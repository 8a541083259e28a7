/**
 * A gradient hook, as PyTorch's `register_post_accumulate_grad_hook`: `gradientHook(x, onGradient)` is x in the
 * forward pass, and in the backward pass `onGradient` receives x's gradient summed over every use of the returned
 * tensor, once, as soon as the backward pass has finished it. tfjs visits the tape in reverse, so by the time it
 * reaches the hook's node every later op that read the hooked tensor has given its share (tape.ts accumulates a
 * tensor's gradient before it visits the op that made it).
 *
 * Data parallelism uses it to start a bucket's all-reduce while the backward pass still computes the earlier
 * layers' gradients (the reduction's overlap with the backward, Megatron's overlap_grad_reduce). `onGradient` may
 * enqueue work that reads `grad`; it must not dispose it (tfjs hands the same tensor on to the variable).
 */
import * as tf from '@tensorflow/tfjs-core';

export type GradientCallback = (grad: tf.Tensor) => void;

export function gradientHook<T extends tf.Tensor>(x: T, onGradient: GradientCallback): T {
  const hooked = tf.customGrad((input) => ({
    // A view (no copy on any backend): customGrad needs a tensor of its own as the node's output.
    value: tf.clone(input as tf.Tensor),
    gradFunc: (dy: tf.Tensor) => {
      onGradient(dy);
      return dy;
    },
  }));
  return hooked(x) as T;
}
