/**
 * The teacher worker's loop: send the head to each student it serves, then answer input ids with final hidden
 * states, in order of arrival, until the launcher shuts the transport down.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../model/causalLM.ts';
import { frameToTensor, tensorToFrame } from './tensorFrame.ts';
import { TransportClosedError, type Transport } from '../runtime/transport.ts';

export async function serveTeacher(transport: Transport, teacher: CausalLM, students: readonly number[]): Promise<number> {
  const head = await tensorToFrame(teacher.headWeight());
  for (const s of students) transport.send(s, { kind: 'teacherHead', head });
  let served = 0;
  for (;;) {
    let req;
    try {
      req = await transport.receiveAny('teacherRequest');
    } catch (e) {
      if (e instanceof TransportClosedError) return served;
      throw e;
    }
    const ids = frameToTensor(req.message.inputIds) as tf.Tensor2D;
    const hidden = tf.tidy(() => {
      const h = teacher.hidden(ids);
      const [b, s, d] = h.shape;
      return tf.reshape(h, [b * s, d]);
    });
    ids.dispose();
    const frame = await tensorToFrame(hidden);
    hidden.dispose();
    transport.send(req.from, { kind: 'teacherHidden', id: req.message.id, hidden: frame });
    served++;
  }
}
