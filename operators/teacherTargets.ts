/**
 * The frozen teacher's forward pass: the teacher's targets for the loss. It runs outside any gradient tape, so no
 * gradient is ever computed for it.
 *
 * What it passes on is the teacher's final hidden states and a reference to its output head rather than the
 * [tokens, vocab] logits themselves: the loss multiplies them out chunk by chunk, so the full logits never exist
 * at once (2048 × 151,936 floats would be 1.2 GB per micro-batch). Hence the name: targets, not logits.
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { TeacherBatch, TokenBatch } from '../src/train/batch.ts';
import { inStage } from './stageErrors.ts';

export function teacherTargets(teacher: CausalLM): OperatorFunction<TokenBatch, TeacherBatch> {
  return map((batch) => {
    const hidden = inStage('teacherTargets', batch.position, () =>
      tf.tidy(() => {
        const h = teacher.hidden(batch.inputIds);
        const [b, s, d] = h.shape;
        return tf.reshape(h, [b * s, d]) as tf.Tensor2D;
      }),
    );
    return { ...batch, teacher: { kind: 'hidden', hidden, head: teacher.headWeight(), headTransposed: teacher.frozenHeadTransposed() ?? undefined } };
  });
}

/** @deprecated since 0.2: the name of `teacherTargets` in 0.1 (it never emitted logits); kept for one release. */
export const teacherLogits = teacherTargets;
