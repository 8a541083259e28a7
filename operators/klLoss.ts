/**
 * Replaces the language-modelling loss with the distillation loss: (1 − α)·CE(next token) + α·KD(teacher ‖ student)
 * (τ² on the KD term when asked), a masked mean over the micro-batch's positions, weighted by the micro-batch's
 * share of the global batch's loss tokens. The [tokens, vocab] logits are formed chunk by chunk inside the loss
 * (src/losses/chunkedKd.ts), so memory grows with chunk × vocab. With no teacher on the batch (pretraining) the
 * loss is the CE alone.
 */
import { defer, map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { ForwardBatch, LossBatch, LossParts } from '../src/train/batch.ts';
import { meanLoss, type MeanLossOptions } from '../src/train/meanLoss.ts';
import { inStage } from './stageErrors.ts';

export interface KlLossOptions extends MeanLossOptions {
  /** Where one-time notes (vocabulary alignment) go. */
  log?: (line: string) => void;
}

export function klLoss(o: KlLossOptions): OperatorFunction<ForwardBatch, LossBatch> {
  return (source) =>
    defer(() => {
      // Per subscription: each run notes the vocabulary alignment once.
      let noted = false;
      const log = (line: string): void => {
        if (!noted) o.log?.(line);
        noted = true;
      };
      return source.pipe(
        map((batch): LossBatch => ({
          ...batch,
          loss: (): LossParts =>
            inStage('klLoss', batch.position, () => {
              const share = batch.globalBatchTokens > 0 ? batch.tokens / batch.globalBatchTokens : 0;
              const r = meanLoss(o, {
                studentHidden: batch.studentForward(),
                studentHead: batch.studentHead(),
                teacher: batch.teacher,
                mask: tf.reshape(batch.lossMask, [-1]) as tf.Tensor1D,
                labels: tf.reshape(batch.labels, [-1]) as tf.Tensor1D,
                what: `batch at step ${batch.position.step + 1}`,
                log,
              });
              return { total: tf.mul(r.loss, share) as tf.Scalar, kd: r.kd, ce: r.ce };
            }),
        })),
      );
    });
}
