/**
 * Attaches the student's forward pass to each batch, as a function: `backward` runs it (with the loss around it)
 * under the gradient tape, because tfjs differentiates functions, not tensors computed earlier. So this stage runs
 * nothing itself; an error in the forward pass, when it runs, still names it ("studentForward failed at ...").
 *
 * @example
 * batches.pipe(teacherTargets(teacher), attachStudent(student), klLoss(loss), backward(student), optimizerStep(o))
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { ForwardBatch, TeacherBatch } from '../src/train/batch.ts';
import { inStage } from './stageErrors.ts';

export function attachStudent(student: CausalLM): OperatorFunction<TeacherBatch, ForwardBatch> {
  return map((batch) => ({
    ...batch,
    studentForward: () =>
      inStage('studentForward', batch.position, () => {
        const h = student.hidden(batch.inputIds);
        const [b, s, d] = h.shape;
        return tf.reshape(h, [b * s, d]) as tf.Tensor2D;
      }),
    studentHead: () => student.headWeight(),
  }));
}

/** @deprecated since 0.2: the 0.1 name of `attachStudent` (it runs no forward pass itself); kept for one release. */
export const studentForward = attachStudent;
