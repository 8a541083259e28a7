/**
 * The dense KD term of a chunk on webgpu: the fused softmax + divergence kernels (src/backend/webgpu/softmaxKl.ts)
 * in place of kdTerm's composition of ~35 ops per chunk. Forward: one kernel after the teacher's logits. Backward:
 * two, the per-row statistics again (cheap next to the logits, which chunkedHead either recomputes or keeps from
 * the forward, chunkCache.ts) and then d/dz, which also writes the zeros past the shared vocabulary that kdTerm pads
 * with. Same mathematics as divergences.ts (its tests check the two against each other).
 *
 * Given labels, the next-token CE rides along in the same passes: the term then has width 2 (KD, CE), replacing
 * ceTerm's own gather, log-sum-exp, softmax and scatter.
 */
import * as tf from '@tensorflow/tfjs-core';
import { softmaxKlForward, softmaxKlGradient, type SoftmaxKlArgs } from '../backend/webgpu/softmaxKl.ts';
import { ConfigError } from '../errors.ts';
import type { ChunkTerm } from './chunkedHead.ts';
import { type ChunkCache, RECOMPUTE } from './chunkCache.ts';
import type { TeacherSource } from './chunkedKd.ts';
import type { KdLossOptions } from './types.ts';
import { sharedVocab } from './vocabAlignment.ts';

export function fusedKdTerm(
  teacher: TeacherSource,
  studentVocab: number,
  options: KdLossOptions,
  onNote: (note: string) => void,
  labels?: tf.Tensor1D,
): ChunkTerm {
  let noted = false;
  const own = teacher.tensors.length;
  // The kernels read the labels whole at the chunk's row offset (no slice per chunk); they follow the teacher's
  // tensors in `data`.
  const args = (z: tf.Tensor2D, start: number, end: number, data: tf.Tensor[], cache: ChunkCache): SoftmaxKlArgs => {
    const zT = cache.remember(start, 'teacher', () => teacher.logits(start, end, data.slice(0, own)));
    if (zT.shape[0] !== end - start) throw new ConfigError(`teacher logits for rows [${start}, ${end}) have ${zT.shape[0]} rows`);
    const aligned = sharedVocab(zT.shape[1], studentVocab);
    if (aligned.note && !noted) {
      noted = true;
      onNote(aligned.note);
    }
    return { student: z, teacher: zT, options, labels: labels ? (data[own] as tf.Tensor1D) : undefined, rowOffset: start };
  };
  return {
    tensors: labels ? [...teacher.tensors, labels] : teacher.tensors,
    width: labels ? 2 : 1,
    value: (z, start, end, data, cache = RECOMPUTE) =>
      tf.tidy(() => {
        const v = softmaxKlForward(args(z, start, end, data, cache), 'values');
        return labels ? v : (v.reshape([end - start]) as tf.Tensor1D);
      }),
    gradient: (z, start, end, rowScale, data, cache = RECOMPUTE) =>
      tf.tidy(() => {
        const a = args(z, start, end, data, cache);
        return softmaxKlGradient(a, softmaxKlForward(a, 'stats'), rowScale);
      }),
  };
}
