/**
 * The masked-mean loss of one micro-batch, unweighted: (1 − α)·CE(next token) + α·KD(teacher ‖ student) with a
 * teacher, the CE alone without one. The [tokens, vocab] logits are formed chunk by chunk inside the losses
 * (src/losses/chunkedKd.ts). The `klLoss` operator and the model-parallel trainer's last stage both call it.
 *
 * α has one name in the recipe, the operators, the losses and the CLI: `kdRatio` (`--kd_ratio`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { SparseTeacherTargets, TeacherTargets } from './batch.ts';
import type { KdLossOptions } from '../losses/types.ts';
import { kdLossFromHidden, ceTerm, lossChunkRows } from '../losses/chunkedKd.ts';
import { sparseKdLossFromHidden } from '../losses/chunkedSparseKd.ts';
import { chunkedHeadMeans } from '../losses/chunkedHead.ts';

export interface MeanLossOptions extends Omit<KdLossOptions, 'alpha' | 'kdRatio'> {
  /** α: the weight of the KD term in (1 − α)·CE + α·KD; 0 trains on CE alone. */
  kdRatio: number;
  /** Token positions per chunk of the vocabulary-wide loss; 0 sizes chunks by memory (lossChunkRows). */
  chunkSize: number;
}

export interface MeanLossInputs {
  /** [N, h] and [V, h]. */
  studentHidden: tf.Tensor2D;
  studentHead: tf.Tensor2D;
  teacher?: TeacherTargets | SparseTeacherTargets;
  /** [N] float32 and [N] int32 (labels are read only when α < 1). */
  mask: tf.Tensor1D;
  labels: tf.Tensor1D;
  /** Names the batch in an error. */
  what: string;
  log?: (line: string) => void;
}

/** The masked-mean loss of one micro-batch, unweighted: the KD mix with a teacher, the CE alone without one. */
export function meanLoss(o: MeanLossOptions, a: MeanLossInputs): { loss: tf.Scalar; kd?: tf.Scalar; ce?: tf.Scalar } {
  // kdRatio is α here: an `alpha` (its 0.1 name) spread in from older options is not read.
  const options: KdLossOptions = { ...o, alpha: undefined };
  const chunkSize = lossChunkRows(o.chunkSize, a.studentHead.shape[0]);
  const labels = o.kdRatio < 1 ? a.labels : undefined;
  const t = a.teacher;
  if (!t || o.kdRatio === 0) {
    if (!labels) throw new Error(`meanLoss: ${a.what} has no teacher and α = ${o.kdRatio} leaves no loss`);
    const means = chunkedHeadMeans(a.studentHidden, a.studentHead, a.mask, [ceTerm(labels)], chunkSize);
    const ce = tf.reshape(tf.slice(means, [0], [1]), []) as tf.Scalar;
    return { loss: ce, ce };
  }
  const r =
    t.kind === 'hidden'
      ? kdLossFromHidden({
          studentHidden: a.studentHidden,
          studentHead: a.studentHead,
          teacherHidden: t.hidden,
          teacherHead: t.head,
          teacherHeadTransposed: t.headTransposed,
          labels,
          mask: a.mask,
          options,
          chunkSize,
          log: a.log,
        })
      : sparseKdLossFromHidden({ studentHidden: a.studentHidden, studentHead: a.studentHead, targets: t.targets, labels, mask: a.mask, options, chunkSize });
  return { loss: r.loss, kd: r.kd, ce: r.ce ?? undefined };
}
