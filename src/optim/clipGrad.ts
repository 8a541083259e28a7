/**
 * Global-norm gradient clipping as torch.nn.utils.clip_grad_norm_ does it: the norm over all gradients together,
 * then every gradient scaled by min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping, which is what
 * NeMo logs as grad_norm.
 */
import * as tf from '@tensorflow/tfjs-core';

export function globalNorm(grads: Iterable<tf.Tensor>): tf.Scalar {
  return tf.tidy(() => {
    // A running sum, not tf.addN: webgpu's AddN binds every input to one shader and fails past the adapter's
    // storage-buffer limit (a model has far more parameters than that).
    let total = tf.scalar(0);
    for (const g of grads) total = tf.add(total, tf.sum(tf.square(g)));
    return tf.sqrt(total) as tf.Scalar;
  });
}

/** Clips in place (replacing map entries, disposing the old tensors); returns the pre-clip norm. */
export async function clipGradNorm(grads: Map<string, tf.Tensor>, maxNorm: number): Promise<number> {
  const normT = globalNorm(grads.values());
  const norm = (await normT.data())[0];
  normT.dispose();
  if (maxNorm > 0 && Number.isFinite(norm)) {
    const coef = Math.min(1, maxNorm / (norm + 1e-6));
    if (coef < 1) {
      for (const [k, g] of grads) {
        grads.set(k, tf.mul(g, coef));
        g.dispose();
      }
    }
  }
  return norm;
}
