/**
 * The two weight layouts of Hugging Face checkpoints, used in place rather than transposed on load, so that the
 * variables keep the file's layout and save back unchanged: torch Linear stores (out, in), GPT-2's Conv1D (in, out).
 */
import * as tf from '@tensorflow/tfjs-core';

/** x [n, in] · wᵀ (+ b), w (out, in): torch.nn.Linear. */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  return tf.tidy(() => {
    const y: tf.Tensor2D = tf.matMul(x, w, false, true);
    return b ? tf.add<tf.Tensor2D>(y, b) : y;
  });
}

/** x [n, in] · w + b, w (in, out): transformers' Conv1D. */
export function conv1d(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  return tf.tidy(() => tf.add<tf.Tensor2D>(tf.matMul(x, w), b));
}
