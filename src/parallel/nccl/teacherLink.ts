/**
 * The teacher's tensors between a teacher worker and one student it serves, device to device over the pair's
 * communicator (NCCL on cuda, bootstrap.ts), with the control messages on the transport. Where the pair cannot
 * run NCCL the tensors stay msgpackr frames (remoteTeacher.ts, teacherServer.ts) and nothing here is used.
 *
 * The order of one request, `id`:
 *
 *   student → teacher  teacherRequest      {id, input ids}   as soon as the batch is read (--in_flight ahead)
 *   teacher → student  teacherHiddenHeld   {id, shape}       its forward pass is enqueued; the states are held
 *   student → teacher  teacherHiddenPosted {id, shape}       the batch reached the stage; the receive is posted
 *   teacher ⇒ student  ncclSend / ncclRecv of [rows·seq, hidden]
 *
 * The teacher sends only after the student has posted the receive: NCCL's send holds the teacher's one stream until
 * the receive is posted, so a send to a student that is still training an earlier step would hold every later
 * forward pass on the teacher, those for the other students too, and a student waiting for another in the
 * gradient all-reduce would wait until the bound ended the run. The announcement carries the shape, so a student that expects
 * another shape says so, naming both sides, before anything is posted (NCCL carries bytes, not shapes: a receive
 * of the wrong size would hang or cut the states short).
 *
 * The head [vocab, hidden] goes the same way, once, right after the pair joins (teacherHeadAnnounced {shape}, then
 * the send): it can be ~0.9 GB (151,936 × 1,536 float32), more than a frame may be between nodes
 * (DISTILL_MAX_FRAME_MB), and it is needed on the device anyway. Both sides reach it at the same point of their
 * programs, so it needs no handshake.
 *
 * The announcements are kinds of their own (runtime/messages.ts), shapes without values: the frames path's
 * teacherHead and teacherHidden are never sent on a pair that has a communicator, so a reader of those always gets
 * values.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { DistillError } from '../../errors.ts';
import type { Transport } from '../../runtime/transport.ts';
import type { Communicator } from './communicator.ts';
import { groupCollectives, type BootstrapOptions, type GroupCollectives } from './bootstrap.ts';

/** The teacher is rank 0 of every pair (it decides for the pair, as rank 0 of any group does); the student rank 1. */
const TEACHER_RANK = 0;
const STUDENT_RANK = 1;

/** The teacher's states did not come, came out of order, or came in another shape than the student expects. */
export class TeacherLinkError extends DistillError {
  constructor(
    message: string,
    readonly teacherWorker: number,
  ) {
    super(message);
  }
}

/** The pair's name in logs, errors and NCCL ids. */
export function teacherPairName(teacherWorker: number, studentWorker: number): string {
  return `teacher ${teacherWorker} to student ${studentWorker}`;
}

/**
 * The pair's communicator, or why the tensors stay frames. Both workers call it once, after selecting the backend;
 * a teacher joins its students one after the other in one fixed order (the launcher's), so no two joins wait on
 * each other.
 */
export function joinTeacherPair(transport: Transport, teacherWorker: number, studentWorker: number, o?: BootstrapOptions): Promise<GroupCollectives> {
  return groupCollectives(transport, [teacherWorker, studentWorker], teacherPairName(teacherWorker, studentWorker), o);
}

/** The line that says how the teacher's states reach a student, and why. */
export function teacherLinkLine(teacherWorker: number, studentWorker: number, c: GroupCollectives): string {
  const pair = `teacher worker ${teacherWorker} → student worker ${studentWorker}`;
  if (c.kind === 'nccl') return `${pair}: the head and hidden states over ${c.comm.describe}, device to device`;
  return `${pair}: the head and hidden states as msgpackr frames through the launcher's transport, because ${c.reason}`;
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const shapeText = (s: readonly number[]): string => `[${s.join(', ')}]`;
const seconds = (ms: number): string => `${ms >= 10_000 ? Math.round(ms / 1000) : (ms / 1000).toFixed(1)} s`;

/** The student's end of a pair. */
export class TeacherLinkReceiver {
  private failure: Error | null = null;

  constructor(
    private readonly transport: Transport,
    readonly teacherWorker: number,
    private readonly comm: Communicator,
    /** How long one tensor may take from the start of the wait (DISTILL_COLLECTIVE_TIMEOUT_S). */
    private readonly timeoutMs: number,
  ) {}

  /** The teacher's head, posted right after the join. */
  async receiveHead(): Promise<tf.Tensor2D> {
    const deadline = performance.now() + this.timeoutMs;
    const m = await this.announcement(this.transport.receive(this.teacherWorker, 'teacherHeadAnnounced'), 'the head', deadline);
    if (m.shape.length !== 2)
      throw this.fail(`teacher worker ${this.teacherWorker} announced a head of shape ${shapeText(m.shape)}; a head is [vocab, hidden] (a bug)`);
    return (await this.receive(m.shape, 'the head', deadline)) as tf.Tensor2D;
  }

  /**
   * The states of request `id`, in `expected` shape ([rows·seq of the batch, the head's hidden]); `where` names
   * the batch in errors. Requests are answered in order; another id is a bug and says so.
   */
  async receiveHidden(id: number, expected: readonly [number, number], where: string): Promise<tf.Tensor2D> {
    const deadline = performance.now() + this.timeoutMs;
    const what = `the hidden states of request ${id} (${where})`;
    const m = await this.announcement(this.transport.receive(this.teacherWorker, 'teacherHiddenHeld'), what, deadline);
    if (m.id !== id)
      throw this.fail(
        `teacher worker ${this.teacherWorker} answered request ${m.id} while request ${id} was due (${where}): the teacher stream is out of order (a bug)`,
      );
    if (!sameShape(m.shape, expected))
      throw this.fail(
        `teacher worker ${this.teacherWorker} holds ${what} as ${shapeText(m.shape)}, but student worker ${this.transport.rank} expects ` +
          `${shapeText(expected)} (rows·seq of its batch × the hidden size of the teacher's head): do both run the same teacher and --seq_length?`,
      );
    this.transport.send(this.teacherWorker, { kind: 'teacherHiddenPosted', id, shape: [...expected] });
    return (await this.receive(expected, what, deadline)) as tf.Tensor2D;
  }

  /** Frees the pair's communicator after the run (every receive here ended with the stream synchronized; an aborted one is already freed). */
  close(): void {
    this.comm.destroy();
  }

  /** An announcement on the transport, awaited until `deadline`; past it the pair is aborted and the teacher named. */
  private async announcement<T>(message: Promise<T>, what: string, deadline: number): Promise<T> {
    if (this.failure) throw this.failure;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), Math.max(0, deadline - performance.now()));
    });
    try {
      const got = await Promise.race([message, late]);
      if (got !== 'late') return got;
    } finally {
      clearTimeout(timer);
    }
    // Ask whether the teacher still turns its event loop (liveness.ts); it is about to send one more tensor than this rank has received.
    const report = await this.comm.diagnoseHang?.(this.comm.issued + 1).catch(() => null);
    throw this.fail(
      `teacher worker ${this.teacherWorker} did not announce ${what} within ${seconds(this.timeoutMs)} (DISTILL_COLLECTIVE_TIMEOUT_S)` +
        (report ? `: ${report.text}` : ": it hung or died; the launcher's log names a worker that died"),
    );
  }

  /** Posts the receive and waits (bounded by `deadline`) until the tensor is on this device. */
  private async receive(shape: readonly number[], what: string, deadline: number): Promise<tf.Tensor> {
    let out: tf.Tensor | undefined;
    try {
      [out] = await this.comm.exchange([], [{ peer: TEACHER_RANK, shape: [...shape] }]);
      // NCCL only enqueues the receive: a teacher that hangs now would hold this stream, and the next read of it, for ever.
      await this.comm.synchronize(Math.max(1, deadline - performance.now()));
      return out;
    } catch (e) {
      out?.dispose();
      const why = e instanceof Error ? e.message : String(e);
      throw this.fail(`teacher worker ${this.teacherWorker} did not deliver ${what}: ${why}`);
    }
  }

  /** Ends the pair: later calls fail with the first error, and the communicator is aborted (a no-op when it already was). */
  private fail(message: string): TeacherLinkError {
    const e = new TeacherLinkError(message, this.teacherWorker);
    this.failure ??= e;
    this.comm.abort(e);
    return e;
  }
}

/** The teacher's end of a pair: states wait here, on the device, until the student has posted their receive. */
export class TeacherLinkSender {
  private readonly held = new Map<number, tf.Tensor2D>();

  constructor(
    private readonly transport: Transport,
    readonly studentWorker: number,
    private readonly comm: Communicator,
  ) {}

  /** Announces the head and enqueues its send; the student posts the receive as soon as it has joined. */
  async sendHead(head: tf.Tensor2D): Promise<void> {
    this.transport.send(this.studentWorker, { kind: 'teacherHeadAnnounced', shape: [...head.shape] });
    await this.comm.exchange([{ peer: STUDENT_RANK, tensor: head }], []);
  }

  /** Keeps request `id`'s states (this end owns them now) and tells the student their shape. */
  hold(id: number, hidden: tf.Tensor2D): void {
    this.held.set(id, hidden);
    this.transport.send(this.studentWorker, { kind: 'teacherHiddenHeld', id, shape: [...hidden.shape] });
  }

  /** The student posted the receive of request `id` in `shape`: send the held states and let them go. */
  async release(id: number, shape: readonly number[]): Promise<void> {
    const hidden = this.held.get(id);
    if (!hidden)
      throw new TeacherLinkError(
        `student worker ${this.studentWorker} posted the receive of request ${id}, which teacher worker ${this.transport.rank} does not hold (a bug)`,
        this.transport.rank,
      );
    this.held.delete(id);
    try {
      if (!sameShape(hidden.shape, shape))
        throw new TeacherLinkError(
          `student worker ${this.studentWorker} posted the receive of request ${id} as ${shapeText(shape)}, but teacher worker ${this.transport.rank} holds ${shapeText(hidden.shape)} (a bug: the student checks the announced shape first)`,
          this.transport.rank,
        );
      await this.comm.exchange([{ peer: STUDENT_RANK, tensor: hidden }], []);
    } finally {
      // Freed blocks are reused in stream order, after the send has read them (backend/cuda/allocator.ts).
      hidden.dispose();
    }
  }

  /** The run failed: held states are freed and the communicator aborted, without waiting for the sends. */
  abort(reason: Error): void {
    for (const h of this.held.values()) h.dispose();
    this.held.clear();
    this.comm.abort(reason);
  }

  /** After the run: states no one asked for are freed, the sends drained (bounded) and the communicator freed. */
  async close(timeoutMs: number): Promise<void> {
    for (const h of this.held.values()) h.dispose();
    this.held.clear();
    // A synchronize that fails has aborted the communicator already; the run is over either way.
    await this.comm.synchronize(timeoutMs);
    this.comm.destroy();
  }
}
