/**
 * Rotary position embedding as transformers' Llama applies it, x·cos + rotate_half(x)·sin with
 * rotate_half(x) = cat(−x₂, x₁) over the two halves of each head, as an op: the fused kernels where the current
 * backend registers them, tfjs's composition (split, concat, mul, mul, add) elsewhere.
 *
 * THE KERNEL CONTRACT (the same for every backend; float32):
 * - 'RotaryEmbedding'      inputs {x: [batch, heads, seq, headDim], cosTable: [seq, headDim], sinTable: [seq, headDim]}
 *                          → y, the shape of x. headDim is even; half = headDim / 2; for lane i of position p,
 *                          σ(i) = i + half for i < half, i − half otherwise:
 *                          y[…, p, i] = x[…, p, i]·cosTable[p, i] + x[…, p, σ(i)]·sinTable[p, i]
 * - 'RotaryEmbeddingGrad'  inputs {x: dy (the upstream gradient, in the input named x), cosTable, sinTable}
 *                          → dx, the shape of x; the transpose of the (linear) forward:
 *                          dx[…, p, i] = dy[…, p, i]·cosTable[p, i] + dy[…, p, σ(i)]·sinTable[p, σ(i)]
 * sinTable has rotate_half's sign folded in: −sin(p·θ_i) in the first half of each row, +sin(p·θ_i) in the second
 * (RopeCache's `sinSigned`); cosTable holds cos(p·θ_i) in both halves. The kernels read the tables the composition
 * reads, so both multiply the same float32 numbers. The tables are constants: they get no gradient.
 */
import * as tf from '@tensorflow/tfjs-core';
import { OpInputError } from './inputChecks.ts';
import { hasKernel, runKernel } from './kernels.ts';

export const ROTARY_EMBEDDING_KERNEL = 'RotaryEmbedding';
export const ROTARY_EMBEDDING_GRAD_KERNEL = 'RotaryEmbeddingGrad';

/** x·cos + rotate_half(x)·sinSigned as tfjs ops: the reference the kernels are tested against. */
export function composedRotaryEmbedding(x: tf.Tensor4D, cos: tf.Tensor2D, sinSigned: tf.Tensor2D): tf.Tensor4D {
  return tf.tidy(() => {
    const [x1, x2] = tf.split(x, 2, 3);
    const swapped = tf.concat([x2, x1], 3);
    return tf.add(tf.mul(x, cos), tf.mul(swapped, sinSigned)) as tf.Tensor4D;
  });
}

/**
 * x·cos + rotate_half(x)·sin for x [batch, heads, seq, headDim], differentiable with respect to x. The kernels apply
 * to float32 x and tables of exactly [seq, headDim]; other table shapes broadcast through the composition.
 */
export function rotaryEmbedding(x: tf.Tensor4D, cos: tf.Tensor2D, sinSigned: tf.Tensor2D): tf.Tensor4D {
  if (x.rank !== 4 || x.shape[3] % 2 !== 0) {
    throw new OpInputError(`rotaryEmbedding: x [${x.shape}] must be [batch, heads, seq, headDim] with headDim even (rotate_half pairs the two halves)`);
  }
  const [, , seq, headDim] = x.shape;
  const table = (t: tf.Tensor): boolean => t.rank === 2 && t.dtype === 'float32' && t.shape[0] === seq && t.shape[1] === headDim;
  const fits = x.dtype === 'float32' && x.size > 0 && table(cos) && table(sinSigned);
  if (!fits || !hasKernel(ROTARY_EMBEDDING_KERNEL, ROTARY_EMBEDDING_GRAD_KERNEL)) return composedRotaryEmbedding(x, cos, sinSigned);
  const fused = tf.customGrad((input) => ({
    value: runKernel<tf.Tensor4D>(ROTARY_EMBEDDING_KERNEL, { x: input as tf.Tensor4D, cosTable: cos, sinTable: sinSigned }),
    gradFunc: (dy: tf.Tensor4D) => runKernel<tf.Tensor4D>(ROTARY_EMBEDDING_GRAD_KERNEL, { x: dy, cosTable: cos, sinTable: sinSigned }),
  }));
  return fused(x) as tf.Tensor4D;
}
