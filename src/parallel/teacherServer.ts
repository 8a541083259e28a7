/**
 * The teacher worker's loop: join each student it serves and send it the head, then answer input ids with final
 * hidden states, in order of arrival, until the launcher shuts the transport down.
 *
 * How a student's tensors travel is decided per pair when it joins (nccl/teacherLink.ts): over the pair's NCCL
 * communicator on cuda, where the states wait on this device until the student has posted their receive; as
 * msgpackr frames through the transport elsewhere, sent as soon as they are read back.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../model/causalLM.ts';
import { frameToTensor, tensorToFrame, type TensorFrame } from './tensorFrame.ts';
import { TransportClosedError, type Transport } from '../runtime/transport.ts';
import type { BootstrapOptions } from './nccl/bootstrap.ts';
import { collectiveTimeoutMs } from './nccl/communicator.ts';
import { joinTeacherPair, teacherLinkLine, TeacherLinkError, TeacherLinkSender } from './nccl/teacherLink.ts';

/** What the loop needs of the teacher: its final hidden states and its head. */
export type TeacherForward = Pick<CausalLM, 'hidden' | 'headWeight'>;

export interface ServeTeacherOptions {
  /** Where the line about each student's link goes. */
  log?: (line: string) => void;
  /** How each pair's communicator is agreed on (nccl/bootstrap.ts); tests pass an in-process fake. */
  bootstrap?: BootstrapOptions;
  /** The bound on draining the sends at the end; DISTILL_COLLECTIVE_TIMEOUT_S by default. */
  timeoutMs?: number;
}

/** Serves `students` (worker ids) until the transport closes; returns how many micro-batches it answered. */
export async function serveTeacher(transport: Transport, teacher: TeacherForward, students: readonly number[], o: ServeTeacherOptions = {}): Promise<number> {
  const head = teacher.headWeight();
  // null: the student takes frames.
  const links = new Map<number, TeacherLinkSender | null>();
  let headFrame: TensorFrame | null = null;
  // One student at a time, in the launcher's order: a join waits for its student only.
  for (const s of students) {
    const c = await joinTeacherPair(transport, transport.rank, s, o.bootstrap);
    o.log?.(teacherLinkLine(transport.rank, s, c));
    if (c.kind === 'nccl') {
      const link = new TeacherLinkSender(transport, s, c.comm);
      await link.sendHead(head);
      links.set(s, link);
    } else {
      headFrame ??= await tensorToFrame(head);
      transport.send(s, { kind: 'teacherHead', head: headFrame });
      links.set(s, null);
    }
  }
  const onDevice = [...links.values()].filter((l): l is TeacherLinkSender => l !== null);
  let served: number;
  try {
    [served] = await Promise.all([answerRequests(transport, teacher, links), onDevice.length ? sendWhenPosted(transport, links) : 0]);
  } catch (e) {
    // Not drained: a send that cannot finish would hold this error back for the whole bound.
    for (const l of onDevice) l.abort(e instanceof Error ? e : new Error(String(e)));
    throw e;
  }
  const timeoutMs = o.timeoutMs ?? collectiveTimeoutMs();
  for (const l of onDevice) await l.close(timeoutMs);
  return served;
}

/** Each request's forward pass, in order of arrival; its states go out as a frame or wait for the student's receive. */
async function answerRequests(transport: Transport, teacher: TeacherForward, links: ReadonlyMap<number, TeacherLinkSender | null>): Promise<number> {
  let served = 0;
  for (;;) {
    const req = await untilClosed(transport.receiveAny('teacherRequest'));
    if (!req) return served;
    const ids = frameToTensor(req.message.inputIds) as tf.Tensor2D;
    const hidden = tf.tidy(() => {
      const h = teacher.hidden(ids);
      const [b, s, d] = h.shape;
      return tf.reshape(h, [b * s, d]) as tf.Tensor2D;
    });
    ids.dispose();
    const link = links.get(req.from);
    if (link === undefined) {
      hidden.dispose();
      throw new TeacherLinkError(
        `teacher worker ${transport.rank} got request ${req.message.id} from worker ${req.from}, which it does not serve (a bug)`,
        transport.rank,
      );
    }
    if (link) {
      link.hold(req.message.id, hidden);
    } else {
      const frame = await tensorToFrame(hidden);
      hidden.dispose();
      transport.send(req.from, { kind: 'teacherHidden', id: req.message.id, hidden: frame });
    }
    served++;
  }
}

/** Students on a communicator say when they have posted a receive (teacherHiddenPosted); the send follows. */
async function sendWhenPosted(transport: Transport, links: ReadonlyMap<number, TeacherLinkSender | null>): Promise<number> {
  for (;;) {
    const posted = await untilClosed(transport.receiveAny('teacherHiddenPosted'));
    if (!posted) return 0;
    const link = links.get(posted.from);
    if (!link)
      throw new TeacherLinkError(
        `teacher worker ${transport.rank} got a posted receive from worker ${posted.from}, which it serves ${link === null ? 'with frames' : 'not at all'} (a bug)`,
        transport.rank,
      );
    await link.release(posted.message.id, posted.message.shape);
  }
}

/** The message, or null once the launcher has shut the transport down. */
async function untilClosed<T>(p: Promise<T>): Promise<T | null> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof TransportClosedError) return null;
    throw e;
  }
}
