/**
 * Where a chunked KD loss reads its teacher's logits, chunk by chunk: the one type that the composed KD term
 * (chunkedKd.ts) and the fused one (fusedKdTerm.ts) both take, kept apart so neither imports the other for it.
 */
import type * as tf from '@tensorflow/tfjs-core';

/** Where a chunk's teacher logits come from: `tensors` are saved for the backward and handed back as `data`. */
export interface TeacherSource {
  tensors: tf.Tensor[];
  logits(start: number, end: number, data: tf.Tensor[]): tf.Tensor2D;
}
