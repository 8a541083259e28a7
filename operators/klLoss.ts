/**
 * Replaces the language-modelling loss with the distillation loss: (1 − α)·CE(next token) + α·KD(teacher ‖ student)
 * (τ² on the KD term when asked), a masked mean over the micro-batch's positions, weighted by the micro-batch's
 * share of the global batch's loss tokens. The [tokens, vocab] logits are formed chunk by chunk inside the loss
 * (src/losses/chunkedKd.ts), so memory grows with chunk × vocab. With no teacher on the batch (pretraining) the
 * loss is the CE alone.
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { ForwardBatch, LossBatch, LossParts } from '../src/train/batch.ts';
import type { KdLossOptions } from '../src/losses/types.ts';
import { kdLossFromHidden, ceTerm } from '../src/losses/chunkedKd.ts';
import { sparseKdLossFromHidden } from '../src/losses/chunkedSparseKd.ts';
import { chunkedHeadMeans } from '../src/losses/chunkedHead.ts';
import { inStage } from './stageErrors.ts';

export interface KlLossOptions extends KdLossOptions {
  /** α: the weight of the KD term; 0 trains on CE alone. */
  kdRatio: number;
  /** Token positions per chunk of the vocabulary-wide loss. */
  chunkSize: number;
  /** Where one-time notes (vocabulary alignment) go. */
  log?: (line: string) => void;
}

export function klLoss(o: KlLossOptions): OperatorFunction<ForwardBatch, LossBatch> {
  const options: KdLossOptions = { ...o, alpha: o.kdRatio };
  let noted = false;
  const log = (line: string): void => {
    if (!noted) o.log?.(line);
    noted = true;
  };
  return map((batch) => ({
    ...batch,
    loss: (): LossParts => inStage('klLoss', batch.position, () => {
      const share = batch.globalBatchTokens > 0 ? batch.tokens / batch.globalBatchTokens : 0;
      const studentHidden = batch.studentForward();
      const studentHead = batch.studentHead();
      const mask = tf.reshape(batch.lossMask, [-1]) as tf.Tensor1D;
      const labels = o.kdRatio < 1 ? (tf.reshape(batch.labels, [-1]) as tf.Tensor1D) : undefined;
      const t = batch.teacher;
      if (!t || o.kdRatio === 0) {
        if (!labels) throw new Error(`klLoss: batch at step ${batch.position.step} has no teacher and α = ${o.kdRatio} leaves no loss`);
        const means = chunkedHeadMeans(studentHidden, studentHead, mask, [ceTerm(labels)], o.chunkSize);
        const ce = tf.reshape(tf.slice(means, [0], [1]), []) as tf.Scalar;
        return { total: tf.mul(ce, share) as tf.Scalar, ce };
      }
      const r = t.kind === 'hidden'
        ? kdLossFromHidden({ studentHidden, studentHead, teacherHidden: t.hidden, teacherHead: t.head, teacherHeadTransposed: t.headTransposed, labels, mask, options, chunkSize: o.chunkSize, log })
        : sparseKdLossFromHidden({ studentHidden, studentHead, targets: t.targets, labels, mask, options, chunkSize: o.chunkSize });
      return { total: tf.mul(r.loss, share) as tf.Scalar, kd: r.kd, ce: r.ce ?? undefined };
    }),
  }));
}
