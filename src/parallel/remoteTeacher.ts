/**
 * The student side of a teacher on its own worker. Each micro-batch's input ids are sent to the teacher as soon
 * as the batch is read (up to --in_flight micro-batches ahead), and its hidden states are awaited only when the
 * batch reaches this stage: the teacher's forward pass for later batches runs while the student trains on this one.
 *
 * The teacher's head [vocab, hidden] arrives once, at connect(); the loss applies it chunk by chunk, exactly as
 * with a local teacher, so the full logits never cross the wire.
 *
 * How the tensors travel is the pair's choice (nccl/teacherLink.ts), made once at connect(): device to device over
 * the pair's NCCL communicator on cuda, msgpackr frames through the launcher's transport elsewhere. The input ids
 * are frames either way: they come off the data on the host.
 */
import { concatMap, map, type OperatorFunction } from 'rxjs';
import type * as tf from '@tensorflow/tfjs-core';
import { tokenRecordIds } from '../train/tokenRecords.ts';
import type { TeacherBatch, TokenBatch } from '../train/batch.ts';
import { arrayToFrame, frameToTensor } from './tensorFrame.ts';
import type { Transport } from '../runtime/transport.ts';
import type { BootstrapOptions } from './nccl/bootstrap.ts';
import { collectiveTimeoutMs } from './nccl/communicator.ts';
import { joinTeacherPair, TeacherLinkReceiver } from './nccl/teacherLink.ts';

export interface RemoteTeacherOptions {
  /** How the pair's communicator is agreed on (nccl/bootstrap.ts); tests pass an in-process fake. */
  bootstrap?: BootstrapOptions;
  /** The bound on one tensor's wait over the communicator; DISTILL_COLLECTIVE_TIMEOUT_S by default. */
  timeoutMs?: number;
}

export class RemoteTeacher {
  private head: tf.Tensor2D | null = null;
  /** The pair's communicator, or null when the states come as frames. */
  private link: TeacherLinkReceiver | null = null;
  private nextId = 0;

  constructor(
    private readonly transport: Transport,
    readonly teacherWorker: number,
    private readonly o: RemoteTeacherOptions = {},
  ) {}

  /** Joins the pair (the teacher decides how its tensors travel) and receives the head. */
  async connect(): Promise<void> {
    const c = await joinTeacherPair(this.transport, this.teacherWorker, this.transport.rank, this.o.bootstrap);
    if (c.kind === 'nccl') {
      this.link = new TeacherLinkReceiver(this.transport, this.teacherWorker, c.comm, this.o.timeoutMs ?? collectiveTimeoutMs());
      this.head = await this.link.receiveHead();
      return;
    }
    const m = await this.transport.receive(this.teacherWorker, 'teacherHead');
    this.head = frameToTensor(m.head) as tf.Tensor2D;
  }

  /** Replaces the teacherLogits stage; call it after the backend is selected (the head becomes a tensor). */
  stage(): OperatorFunction<TokenBatch, TeacherBatch> {
    const ready = this.head ? Promise.resolve() : this.connect();
    // Awaited by the first batch; marked handled here so an early failure is not an unhandled rejection.
    ready.catch(() => {});
    return (source) =>
      source.pipe(
        map((batch) => {
          const id = this.nextId++;
          // From the host copy the batch came with, not the tensor: webgpu cannot read a tensor synchronously in Node.
          const ids = hostInputIds(batch);
          this.transport.send(this.teacherWorker, { kind: 'teacherRequest', id, inputIds: arrayToFrame(ids, batch.inputIds.shape) });
          return { batch, id };
        }),
        concatMap(async ({ batch, id }): Promise<TeacherBatch> => {
          await ready;
          const hidden = this.link ? await this.onDevice(batch, id) : await this.asFrame(batch, id);
          return { ...batch, teacher: { kind: 'hidden', hidden, head: this.head! } };
        }),
      );
  }

  dispose(): void {
    this.head?.dispose();
    this.head = null;
    this.link?.close();
    this.link = null;
  }

  private async asFrame(batch: TokenBatch, id: number): Promise<tf.Tensor2D> {
    const m = await this.transport.receive(this.teacherWorker, 'teacherHidden');
    if (m.id !== id)
      throw new Error(
        `teacher worker ${this.teacherWorker} answered request ${m.id} while request ${id} was due (step ${batch.position.step}): the teacher stream is out of order (a bug)`,
      );
    return frameToTensor(m.hidden) as tf.Tensor2D;
  }

  /** The receive is posted now, as the batch reaches the stage, in the shape this batch and the head imply. */
  private onDevice(batch: TokenBatch, id: number): Promise<tf.Tensor2D> {
    const [rows, seq] = batch.inputIds.shape;
    const { step, micro, numMicro } = batch.position;
    return this.link!.receiveHidden(id, [rows * seq, this.head!.shape[1]], `step ${step}, micro-batch ${micro + 1} of ${numMicro}`);
  }
}

/** The batch's input ids [rows × seq] from its Arrow record batch (windows of seq + 1 tokens, or of seq). */
function hostInputIds(batch: TokenBatch): Int32Array {
  const { ids, rows, width } = tokenRecordIds(batch.records);
  const seq = batch.inputIds.shape[1];
  if (width === seq) return ids;
  const out = new Int32Array(rows * seq);
  for (let r = 0; r < rows; r++) out.set(ids.subarray(r * width, r * width + seq), r * seq);
  return out;
}
