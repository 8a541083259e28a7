/**
 * The Communicator over NCCL on the `cuda` backend: tensors stay in device memory, every collective is enqueued on
 * the backend's one stream (so it is ordered after the kernels that made its input and before those that read its
 * output, with no event needed), and nothing is copied to the host.
 *
 * The communicator is a blocking one (NCCL's default): ncclCommInitRank returns when every rank of the group has
 * joined, so it runs on one of koffi's worker threads (the event loop keeps flushing this worker's messages, which
 * a peer may need before it reaches the same join). NCCL takes the calling thread's current device, which is
 * device 0 there as here: the cuda backend runs device 0 of what CUDA_VISIBLE_DEVICES leaves each worker, and the
 * runtime shares that device's primary context with the driver API. Collectives only enqueue; `synchronize` polls the stream and ncclCommGetAsyncError between turns of the
 * event loop, and past its bound calls ncclCommAbort and throws, so a peer that died or hangs ends this rank's run
 * with an error instead of a process stuck in a CUDA wait.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CudaBackend } from '../../backend/cuda/backend.ts';
import { BackendError } from '../../errors.ts';
import { CollectiveError, collectiveTimeoutMs, type Communicator, type PeerReceive, type PeerSend } from './communicator.ts';
import {
  loadNccl,
  NCCL_DTYPE,
  NCCL_IN_PROGRESS,
  NCCL_SUCCESS,
  NCCL_SUM,
  NCCL_UNIQUE_ID_BYTES,
  ncclVersionString,
  type Nccl,
  type NcclComm,
} from './ncclLibrary.ts';
import { CUDA_ERROR_NOT_READY, CUDA_SUCCESS, pause, streamQuery } from './streamWait.ts';
import type { HangReport } from './liveness.ts';

/** The cuda backend tfjs runs now, or a BackendError saying that NCCL needs it. */
export function activeCudaBackend(): CudaBackend {
  const name = tf.getBackend();
  if (name !== 'cuda')
    throw new BackendError(
      `NCCL collectives run on the cuda backend; this process runs ${name} (use --backend cuda, or the ring all-reduce on the CPU backends)`,
    );
  return tf.backend() as CudaBackend;
}

const seconds = (ms: number): string => `${ms >= 10_000 ? Math.round(ms / 1000) : (ms / 1000).toFixed(1)} s`;

export class NcclCommunicator implements Communicator {
  readonly describe: string;
  issued = 0;
  diagnoseHang?: (issued: number) => Promise<HangReport>;
  private aborted: Error | null = null;
  private destroyed = false;

  private constructor(
    private readonly nccl: Nccl,
    private readonly backend: CudaBackend,
    private readonly comm: NcclComm,
    readonly rank: number,
    readonly size: number,
    readonly name: string,
  ) {
    this.describe = `NCCL ${ncclVersionString(nccl.version)}`;
  }

  /**
   * Joins group `name` as `rank` of `size` with the unique id rank 0 made (bootstrap.ts hands it round). Resolves
   * when every rank has joined (NCCL's own bootstrap, over its sockets, does the waiting); rejects after
   * `timeoutMs` naming the group, when a rank never came.
   */
  static async join(
    id: Uint8Array,
    size: number,
    rank: number,
    name: string,
    o: { backend?: CudaBackend; timeoutMs?: number; inThread?: boolean } = {},
  ): Promise<NcclCommunicator> {
    if (id.length !== NCCL_UNIQUE_ID_BYTES) throw new CollectiveError(`group ${name}: an ncclUniqueId has ${NCCL_UNIQUE_ID_BYTES} bytes, got ${id.length}`);
    if (!(rank >= 0 && rank < size)) throw new CollectiveError(`group ${name}: rank ${rank} is not in 0..${size - 1}`);
    const backend = o.backend ?? activeCudaBackend();
    const timeoutMs = o.timeoutMs ?? collectiveTimeoutMs();
    const nccl = loadNccl();
    const comm: NcclComm[] = [null];
    const call = `ncclCommInitRank(group ${name}, rank ${rank} of ${size})`;
    const args = [comm, size, { internal: Array.from(id) }, rank];
    const inThread = nccl.fn.ncclCommInitRank.async as ((...a: unknown[]) => void) | undefined;
    let result: unknown;
    if (!(o.inThread ?? size > 1) || !inThread) {
      // One rank waits for nobody: joined on this thread unless asked (the one-rank test of the threaded path).
      result = nccl.fn.ncclCommInitRank(...args);
    } else {
      let timer: NodeJS.Timeout | undefined;
      result = await Promise.race([
        new Promise<unknown>((resolve, reject) => inThread(...args, (err: unknown, r: unknown) => (err ? reject(err) : resolve(r)))),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new CollectiveError(
                  `${call}: not every rank of group ${name} joined within ${seconds(timeoutMs)} (DISTILL_COLLECTIVE_TIMEOUT_S); a worker that died is named in the launcher's log`,
                ),
              ),
            timeoutMs,
          );
          timer.unref();
        }),
      ]).finally(() => clearTimeout(timer));
    }
    try {
      nccl.check(call, result);
    } catch (e) {
      throw new CollectiveError(`${(e as Error).message}. DISTILL_COLLECTIVES=ring on every node runs the group's collectives over our own ring instead`);
    }
    return new NcclCommunicator(nccl, backend, comm[0], rank, size, name);
  }

  private get stream(): unknown {
    return this.backend.driver.stream;
  }

  private dtype(t: tf.Tensor, call: string): number {
    if (t.dtype !== 'float32' && t.dtype !== 'int32')
      throw new CollectiveError(`${call} on group ${this.name}: NCCL carries float32 or int32 tensors here, not ${t.dtype}`);
    return NCCL_DTYPE[t.dtype];
  }

  /** The device pointer of a tensor that lives on this communicator's backend. */
  private ptr(t: tf.Tensor | tf.TensorInfo, call: string): bigint {
    const data = this.backend.tensorData(t);
    if (!data) throw new CollectiveError(`${call} on group ${this.name}: the tensor is not on the cuda backend (made under another backend?)`);
    return data.ptr;
  }

  private enqueue(call: string, result: unknown): void {
    const r = Number(result);
    // A blocking communicator does not answer ncclInProgress; should a future NCCL do so, synchronize() waits it out.
    if (r === NCCL_IN_PROGRESS) return;
    this.nccl.check(`${call} on group ${this.name} (rank ${this.rank} of ${this.size})`, r);
  }

  /** Refuses a call on an ended communicator; counts the collectives (not the waits) for the group's probes. */
  private live(call: string, collective = true): void {
    if (collective) this.issued++;
    if (this.aborted) throw new CollectiveError(`${call} on group ${this.name}: the communicator was aborted (${this.aborted.message})`);
    if (this.destroyed) throw new CollectiveError(`${call} on group ${this.name}: the communicator was destroyed`);
  }

  private output(shape: number[], dtype: 'float32' | 'int32'): { info: tf.TensorInfo; tensor: tf.Tensor } {
    const info = this.backend.makeOutput(shape, dtype);
    return { info, tensor: tf.engine().makeTensorFromTensorInfo(info, this.backend) };
  }

  async allReduceSum(t: tf.Tensor): Promise<tf.Tensor> {
    this.live('ncclAllReduce');
    const dtype = this.dtype(t, 'ncclAllReduce');
    const out = this.output(t.shape.slice(), t.dtype as 'float32' | 'int32');
    if (t.size > 0)
      this.enqueue(
        'ncclAllReduce',
        this.nccl.fn.ncclAllReduce(this.ptr(t, 'ncclAllReduce'), this.ptr(out.info, 'ncclAllReduce'), t.size, dtype, NCCL_SUM, this.comm, this.stream),
      );
    return out.tensor;
  }

  async allGather(t: tf.Tensor): Promise<tf.Tensor> {
    this.live('ncclAllGather');
    const dtype = this.dtype(t, 'ncclAllGather');
    const shape = t.shape.length ? [t.shape[0] * this.size, ...t.shape.slice(1)] : [this.size];
    const out = this.output(shape, t.dtype as 'float32' | 'int32');
    if (t.size > 0)
      this.enqueue(
        'ncclAllGather',
        this.nccl.fn.ncclAllGather(this.ptr(t, 'ncclAllGather'), this.ptr(out.info, 'ncclAllGather'), t.size, dtype, this.comm, this.stream),
      );
    return out.tensor;
  }

  async reduceScatter(t: tf.Tensor): Promise<tf.Tensor> {
    this.live('ncclReduceScatter');
    const dtype = this.dtype(t, 'ncclReduceScatter');
    if (!t.shape.length || t.shape[0] % this.size !== 0)
      throw new CollectiveError(`ncclReduceScatter on group ${this.name}: axis 0 of [${t.shape}] does not divide by the group size ${this.size}`, [this.rank]);
    const out = this.output([t.shape[0] / this.size, ...t.shape.slice(1)], t.dtype as 'float32' | 'int32');
    if (t.size > 0)
      this.enqueue(
        'ncclReduceScatter',
        this.nccl.fn.ncclReduceScatter(
          this.ptr(t, 'ncclReduceScatter'),
          this.ptr(out.info, 'ncclReduceScatter'),
          t.size / this.size,
          dtype,
          NCCL_SUM,
          this.comm,
          this.stream,
        ),
      );
    return out.tensor;
  }

  async exchange(sends: PeerSend[], receives: PeerReceive[]): Promise<tf.Tensor[]> {
    this.live('ncclSend/ncclRecv');
    const outs = receives.map((r) => this.output(r.shape.slice(), r.dtype ?? 'float32'));
    this.enqueue('ncclGroupStart', this.nccl.fn.ncclGroupStart());
    let failure: unknown = null;
    try {
      for (const s of sends) {
        if (s.tensor.size > 0)
          this.enqueue(
            `ncclSend(to rank ${s.peer})`,
            this.nccl.fn.ncclSend(this.ptr(s.tensor, 'ncclSend'), s.tensor.size, this.dtype(s.tensor, 'ncclSend'), s.peer, this.comm, this.stream),
          );
      }
      receives.forEach((r, i) => {
        if (outs[i].tensor.size > 0)
          this.enqueue(
            `ncclRecv(from rank ${r.peer})`,
            this.nccl.fn.ncclRecv(this.ptr(outs[i].info, 'ncclRecv'), outs[i].tensor.size, NCCL_DTYPE[r.dtype ?? 'float32'], r.peer, this.comm, this.stream),
          );
      });
    } catch (e) {
      failure = e;
    }
    // The group must be closed even when a call inside it failed, or NCCL's next call on this thread joins it.
    const end = Number(this.nccl.fn.ncclGroupEnd());
    if (failure) {
      for (const o of outs) o.tensor.dispose();
      throw failure;
    }
    this.enqueue('ncclGroupEnd', end);
    return outs.map((o) => o.tensor);
  }

  async synchronize(timeoutMs = collectiveTimeoutMs()): Promise<void> {
    this.live('synchronize', false);
    const start = performance.now();
    for (;;) {
      const q = streamQuery(this.stream);
      const state = [0];
      this.nccl.check('ncclCommGetAsyncError', this.nccl.fn.ncclCommGetAsyncError(this.comm, state));
      if (state[0] !== NCCL_SUCCESS && state[0] !== NCCL_IN_PROGRESS) {
        let detail = `ncclResult ${state[0]}`;
        try {
          this.nccl.check('the group', state[0]);
        } catch (e) {
          detail = (e as Error).message;
        }
        const err = new CollectiveError(
          `group ${this.name}, rank ${this.rank} of ${this.size}: NCCL reported an asynchronous error: ${detail}. A peer rank failed or left; the launcher's log names a worker that died`,
        );
        this.abort(err);
        throw err;
      }
      if (q === CUDA_SUCCESS && state[0] === NCCL_SUCCESS) return;
      if (q !== CUDA_SUCCESS && q !== CUDA_ERROR_NOT_READY) this.backend.driver.check('cuStreamQuery (waiting for NCCL)', q);
      const waited = performance.now() - start;
      if (waited > timeoutMs) {
        // Ask the group who is behind (bounded) before giving up, so that the error can name the rank.
        const report = this.diagnoseHang ? await this.diagnoseHang(this.issued).catch(() => null) : null;
        const why = report ? report.text : "a peer rank hung or died; NCCL does not say which, the launcher's log names a worker that died";
        const err = new CollectiveError(
          `group ${this.name}, rank ${this.rank} of ${this.size}: the collectives did not finish within ${seconds(timeoutMs)} (DISTILL_COLLECTIVE_TIMEOUT_S): ${why}`,
          report?.ranks ?? [],
        );
        this.abort(err);
        throw err;
      }
      await pause(waited);
    }
  }

  abort(reason: Error): void {
    if (this.aborted || this.destroyed) return;
    this.aborted = reason;
    // ncclCommAbort frees the communicator and stops its kernels; a failure to abort leaves nothing to do.
    this.nccl.fn.ncclCommAbort(this.comm);
  }

  destroy(): void {
    if (this.aborted || this.destroyed) return;
    this.destroyed = true;
    this.nccl.check(`ncclCommDestroy(group ${this.name})`, this.nccl.fn.ncclCommDestroy(this.comm));
  }
}
