/**
 * Replaces the language-modelling loss with the distillation loss: (1 − α)·CE(next token) + α·KD(teacher ‖ student)
 * (τ² on the KD term when asked), a masked mean over the micro-batch's positions, weighted by the micro-batch's
 * share of the global batch's loss tokens. The [tokens, vocab] logits are formed chunk by chunk inside the loss
 * (src/losses/chunkedKd.ts), so memory grows with chunk × vocab. With no teacher on the batch (pretraining) the
 * loss is the CE alone.
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { ForwardBatch, LossBatch, LossParts, SparseTeacherTargets, TeacherTargets } from '../src/train/batch.ts';
import type { KdLossOptions } from '../src/losses/types.ts';
import { kdLossFromHidden, ceTerm, lossChunkRows } from '../src/losses/chunkedKd.ts';
import { sparseKdLossFromHidden } from '../src/losses/chunkedSparseKd.ts';
import { chunkedHeadMeans } from '../src/losses/chunkedHead.ts';
import { inStage } from './stageErrors.ts';

export interface KlLossOptions extends KdLossOptions {
  /** α: the weight of the KD term; 0 trains on CE alone. */
  kdRatio: number;
  /** Token positions per chunk of the vocabulary-wide loss; 0 sizes chunks by memory (lossChunkRows). */
  chunkSize: number;
  /** Where one-time notes (vocabulary alignment) go. */
  log?: (line: string) => void;
}

export function klLoss(o: KlLossOptions): OperatorFunction<ForwardBatch, LossBatch> {
  let noted = false;
  const log = (line: string): void => {
    if (!noted) o.log?.(line);
    noted = true;
  };
  return map((batch) => ({
    ...batch,
    loss: (): LossParts => inStage('klLoss', batch.position, () => {
      const share = batch.globalBatchTokens > 0 ? batch.tokens / batch.globalBatchTokens : 0;
      const r = meanLoss(o, {
        studentHidden: batch.studentForward(), studentHead: batch.studentHead(), teacher: batch.teacher,
        mask: tf.reshape(batch.lossMask, [-1]) as tf.Tensor1D, labels: tf.reshape(batch.labels, [-1]) as tf.Tensor1D,
        what: `batch at step ${batch.position.step}`, log,
      });
      return { total: tf.mul(r.loss, share) as tf.Scalar, kd: r.kd, ce: r.ce };
    }),
  }));
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
export function meanLoss(o: KlLossOptions, a: MeanLossInputs): { loss: tf.Scalar; kd?: tf.Scalar; ce?: tf.Scalar } {
  const options: KdLossOptions = { ...o, alpha: o.kdRatio };
  const chunkSize = lossChunkRows(o.chunkSize, a.studentHead.shape[0]);
  const labels = o.kdRatio < 1 ? a.labels : undefined;
  const t = a.teacher;
  if (!t || o.kdRatio === 0) {
    if (!labels) throw new Error(`klLoss: ${a.what} has no teacher and α = ${o.kdRatio} leaves no loss`);
    const means = chunkedHeadMeans(a.studentHidden, a.studentHead, a.mask, [ceTerm(labels)], chunkSize);
    const ce = tf.reshape(tf.slice(means, [0], [1]), []) as tf.Scalar;
    return { loss: ce, ce };
  }
  const r = t.kind === 'hidden'
    ? kdLossFromHidden({ studentHidden: a.studentHidden, studentHead: a.studentHead, teacherHidden: t.hidden, teacherHead: t.head, teacherHeadTransposed: t.headTransposed, labels, mask: a.mask, options, chunkSize, log: a.log })
    : sparseKdLossFromHidden({ studentHidden: a.studentHidden, studentHead: a.studentHead, targets: t.targets, labels, mask: a.mask, options, chunkSize });
  return { loss: r.loss, kd: r.kd, ce: r.ce ?? undefined };
}
