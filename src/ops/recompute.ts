/**
 * Activation recomputation, as torch.utils.checkpoint: `recomputeInBackward(f, inputs)` is f(inputs) in the forward
 * pass, keeping nothing of f's activations but its inputs; the backward pass runs f again on the kept inputs under
 * tf.grads and hands on the gradients of every input. f must be a pure function of its inputs (parameters passed
 * in as inputs, not read from a closure, or they get no gradient) with no randomness, so that the second run
 * computes what the first did.
 */
import * as tf from '@tensorflow/tfjs-core';

export function recomputeInBackward<T extends tf.Tensor>(f: (inputs: tf.Tensor[]) => T, inputs: tf.Tensor[]): T {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const xs = args as tf.Tensor[];
    save(xs);
    return {
      // Under customGrad the forward's ops are not taped; the tidy frees its activations at once.
      value: tf.tidy(() => f(xs)),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        // tfjs's gradients() inside a backward pass replaces the engine's one active tape and sets it to null when
        // done, and the outer pass then frees that tape's saved tensors through it: the outer tape is put back.
        const state = tf.engine().state;
        const outer = state.activeTape;
        try {
          return tf.grads((...ys: tf.Tensor[]) => f(ys))(saved, dy);
        } finally {
          state.activeTape = outer;
        }
      },
    };
  });
  return op(...inputs) as T;
}
