/**
 * The dense KD term of a chunk through the softmaxKl op (src/ops/softmaxKl.ts), for backends that register its
 * fused kernels, in place of kdTerm's composition of ~35 ops per chunk. Forward: one kernel after the teacher's
 * logits. Backward: two, the per-row statistics again (cheap next to the logits, which chunkedHead either recomputes
 * or keeps from the forward, chunkCache.ts) and then d/dz, which also writes the zeros past the shared vocabulary
 * that kdTerm pads with. Same mathematics as divergences.ts (test/backend/fusedKdLoss.test.ts checks the two against
 * each other).
 *
 * Given labels, the next-token CE rides along in the same passes: the term then has width 2 (KD, CE), replacing
 * ceTerm's own gather, log-sum-exp, softmax and scatter.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import { hasSoftmaxKlKernels, softmaxKlBackward, softmaxKlForward, STAT, type SoftmaxKlArgs } from '../ops/softmaxKl.ts';
import type { ChunkTerm } from './chunkedHead.ts';
import { type ChunkCache, RECOMPUTE } from './chunkCache.ts';
import { perPositionDivergence } from './divergences.ts';
import { validateKdOptions } from './mixing.ts';
import type { TeacherSource } from './teacherSource.ts';
import type { KdLossOptions } from './types.ts';
import { sharedVocab } from './vocabAlignment.ts';

/** The softmaxKl op's view of the KD options: the kind, τ, and the mixture weight of JSD (β) or skew KL (λ). */
export function softmaxKlOptions(options: KdLossOptions): Pick<SoftmaxKlArgs, 'kind' | 'temperature' | 'mixWeight'> {
  const mixWeight = options.kind === 'jsd' ? options.jsdBeta : options.kind === 'skew_kl' ? options.skewLambda : 0;
  return { kind: options.kind, temperature: options.temperature, mixWeight };
}

export function fusedKdTerm(
  teacher: TeacherSource,
  studentVocab: number,
  options: KdLossOptions,
  onNote: (note: string) => void,
  labels?: tf.Tensor1D,
): ChunkTerm {
  let noted = false;
  const own = teacher.tensors.length;
  const kd = softmaxKlOptions(options);
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
    return { student: z, teacher: zT, ...kd, labels: labels ? (data[own] as tf.Tensor1D) : undefined, rowOffset: start };
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
        return softmaxKlBackward(a, softmaxKlForward(a, 'stats'), rowScale);
      }),
  };
}

/**
 * The per-row divergence [rows] between softmax(teacher/τ) and softmax(student/τ) (not τ²-scaled), 0 where
 * mask ≤ 0, differentiable w.r.t. the student logits only. Where the backend registers the softmaxKl kernels: one
 * fused kernel forward, whose per-row statistics are saved for one fused kernel backward. Elsewhere: divergences.ts'
 * composition, by autodiff.
 */
export function fusedKdDivergence(student: tf.Tensor2D, teacher: tf.Tensor2D, mask: tf.Tensor1D, options: KdLossOptions): tf.Tensor1D {
  validateKdOptions(options);
  const rows = student.shape[0];
  if (!hasSoftmaxKlKernels()) {
    return tf.tidy(() => {
      const shared = Math.min(student.shape[1], teacher.shape[1]);
      const cut = (x: tf.Tensor2D): tf.Tensor2D => (x.shape[1] > shared ? tf.slice(x, [0, 0], [rows, shared]) : x);
      const d = perPositionDivergence(cut(teacher), cut(student), options);
      return tf.where(tf.greater(mask, 0), d, tf.zerosLike(d));
    });
  }
  const kd = softmaxKlOptions(options);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [s, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const stats = softmaxKlForward({ student: s, teacher, mask, ...kd }, 'stats');
    // The teacher and mask may be gone by the backward (made inside the caller's closure): saved with s and the stats.
    save([s, teacher, mask, stats]);
    const value = tf.reshape(tf.slice(stats, [0, STAT.value], [rows, 1]), [rows]) as tf.Tensor1D;
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [sB, tB, mB, statsB] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D];
      const scale = tf.reshape(dy, [rows, 1]) as tf.Tensor2D;
      return [softmaxKlBackward({ student: sB, teacher: tB, mask: mB, ...kd }, statsB, scale)];
    };
    return { value, gradFunc };
  });
  return op(student) as tf.Tensor1D;
}
