/**
 * The student's forward pass, handed on as a function: `backward` runs it (with the loss around it) under the
 * gradient tape, because tfjs differentiates functions, not tensors computed earlier.
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { ForwardBatch, TeacherBatch } from '../src/train/batch.ts';
import { inStage } from './stageErrors.ts';

export function studentForward(student: CausalLM): OperatorFunction<TeacherBatch, ForwardBatch> {
  return map((batch) => ({
    ...batch,
    // Runs later, under backward's tape; the label still names this stage.
    studentForward: () =>
      inStage('studentForward', batch.position, () => {
        const h = student.hidden(batch.inputIds);
        const [b, s, d] = h.shape;
        return tf.reshape(h, [b * s, d]) as tf.Tensor2D;
      }),
    studentHead: () => student.headWeight(),
  }));
}
