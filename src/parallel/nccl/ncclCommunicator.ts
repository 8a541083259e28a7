/**
 * The Communicator over NCCL on the `cuda` backend: tensors stay in device memory, every collective is enqueued on
 * the backend's one stream (so it is ordered after the kernels that made its input and before those that read its
 * output, with no event needed), and nothing is copied to the host.
 *
 * The communicator is a non-blocking one (ncclConfig_t.blocking = 0). Joining a group waits for every rank of it,
 * and Node's one thread must keep serving this worker's messages meanwhile (a peer may need one before it reaches
 * the same join): ncclCommInitRankConfig returns at once with ncclInProgress, NCCL's own thread does the joining,
 * and this one polls ncclCommGetAsyncError between turns of the event loop. (The join used to be the blocking
 * ncclCommInitRank on one of koffi's worker threads: that killed the process with SIGSEGV on the H200.) In this
 * mode any call may answer ncclInProgress while NCCL's thread launches its work, and NCCL refuses the next call on
 * the communicator until the state is ncclSuccess again, so every call here is followed by that same poll before
 * it returns (`settle`). Polls are bounded by DISTILL_COLLECTIVE_TIMEOUT_S: a rank that never joins, or a peer that
 * never meets a send, ends this rank's wait with an error naming the group and rank instead of a stuck process.
 *
 * NCCL takes the calling thread's current device, which is device 0 here: the cuda backend runs device 0 of what
 * CUDA_VISIBLE_DEVICES leaves each worker, in that device's primary context, which NCCL's threads share. Collectives
 * only enqueue; `synchronize` polls the streams and the asynchronous error the same way, and past its bound calls
 * ncclCommAbort and throws, so a peer that died or hangs ends this rank's run with an error.
 *
 * `startAllReduceSum` is the one collective that runs on a second stream ("side"), for the gradient buckets that
 * start in the middle of the backward pass: the side stream waits for an event recorded on the compute stream at
 * the start (the kernels that made the input), the all-reduce runs there beside the backward's later kernels, and
 * `result()` makes the compute stream wait for the collective's own event. It is called from synchronous code (a
 * gradient hook), so it cannot wait out an ncclInProgress: a start that finds NCCL still busy with the call before
 * is queued, and issued in order once NCCL is free (at the next start, a result() or any other collective); the
 * queue, the stream and its events are sideStream.ts's.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CudaBackend } from '../../backend/cuda/backend.ts';
import { BackendError } from '../../errors.ts';
import { CollectiveError, collectiveTimeoutMs, type Communicator, type PeerReceive, type PeerSend, type PendingCollective } from './communicator.ts';
import {
  loadNccl,
  NCCL_DTYPE,
  NCCL_IN_PROGRESS,
  NCCL_SUCCESS,
  NCCL_SUM,
  NCCL_UNIQUE_ID_BYTES,
  NcclError,
  ncclVersionString,
  type Nccl,
  type NcclComm,
} from './ncclLibrary.ts';
import { CUDA_ERROR_NOT_READY, CUDA_SUCCESS, pause, streamQuery } from './streamWait.ts';
import { SideStream, type SideLaunch } from './sideStream.ts';
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

const SIDE_CALL = 'ncclAllReduce (beside the compute stream)';

const seconds = (ms: number): string => `${ms >= 10_000 ? Math.round(ms / 1000) : (ms / 1000).toFixed(1)} s`;

export class NcclCommunicator implements Communicator {
  readonly describe: string;
  issued = 0;
  diagnoseHang?: (issued: number) => Promise<HangReport>;
  private aborted: Error | null = null;
  private destroyed = false;
  /** The stream startAllReduceSum's collectives run on (sideStream.ts). */
  private readonly side: SideStream;

  private constructor(
    private readonly nccl: Nccl,
    private readonly backend: CudaBackend,
    private readonly comm: NcclComm,
    readonly rank: number,
    readonly size: number,
    readonly name: string,
  ) {
    this.side = new SideStream(
      backend.driver,
      () => {
        const state = [0];
        nccl.check('ncclCommGetAsyncError', nccl.fn.ncclCommGetAsyncError(comm, state));
        return state[0];
      },
      (what, result) => nccl.check(what, result),
    );
    this.describe = `NCCL ${ncclVersionString(nccl.version)}`;
  }

  /**
   * Joins group `name` as `rank` of `size` with the unique id rank 0 made (bootstrap.ts hands it round). Resolves
   * when every rank has joined (NCCL's own bootstrap, over its sockets, does the waiting on NCCL's thread); rejects
   * after `timeoutMs` naming the group when a rank never came, or with NCCL's error when the join failed.
   */
  static async join(
    id: Uint8Array,
    size: number,
    rank: number,
    name: string,
    o: { backend?: CudaBackend; timeoutMs?: number } = {},
  ): Promise<NcclCommunicator> {
    if (id.length !== NCCL_UNIQUE_ID_BYTES) throw new CollectiveError(`group ${name}: an ncclUniqueId has ${NCCL_UNIQUE_ID_BYTES} bytes, got ${id.length}`);
    if (!(rank >= 0 && rank < size)) throw new CollectiveError(`group ${name}: rank ${rank} is not in 0..${size - 1}`);
    const backend = o.backend ?? activeCudaBackend();
    const nccl = loadNccl();
    const handle: NcclComm[] = [null];
    const call = `ncclCommInitRankConfig(group ${name}, rank ${rank} of ${size})`;
    const result = Number(nccl.fn.ncclCommInitRankConfig(handle, size, { internal: Array.from(id) }, rank, nccl.config({ blocking: 0 })));
    const ring = "DISTILL_COLLECTIVES=ring on every node runs the group's collectives over our own ring instead";
    if (result !== NCCL_SUCCESS && result !== NCCL_IN_PROGRESS) {
      // A communicator NCCL allocated before failing is freed; the failure is what the user needs.
      if (handle[0]) nccl.fn.ncclCommAbort(handle[0]);
      let message = `${call} failed`;
      try {
        nccl.check(call, result);
      } catch (e) {
        message = (e as Error).message;
      }
      throw new CollectiveError(`${message}. ${ring}`, [rank]);
    }
    const comm = new NcclCommunicator(nccl, backend, handle[0], rank, size, name);
    try {
      await comm.settle(call, o.timeoutMs ?? collectiveTimeoutMs(), "not every rank of the group joined; a worker that died is named in the launcher's log");
    } catch (e) {
      throw new CollectiveError(`${(e as Error).message}. ${ring}`, e instanceof CollectiveError ? e.ranks : [rank]);
    }
    return comm;
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

  /**
   * After a call on the communicator: an error is thrown (an NcclError naming the call, group and rank); ncclSuccess
   * returns; ncclInProgress is waited out (the poll of `waitFor`), since NCCL refuses the next call until it is over.
   */
  private async enqueued(call: string, result: unknown, timeoutMs = collectiveTimeoutMs()): Promise<void> {
    const r = Number(result);
    const what = `${call} on group ${this.name} (rank ${this.rank} of ${this.size})`;
    if (r === NCCL_IN_PROGRESS) return this.settle(what, timeoutMs);
    this.nccl.check(what, r);
  }

  /** Waits until NCCL's thread has finished the last call (the state leaves ncclInProgress); `stuck` says why it might not. */
  private settle(what: string, timeoutMs: number, stuck?: string): Promise<void> {
    return this.waitFor({ what, stream: false, timeoutMs, stuck });
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

  /** Runs one collective into `out` (when there is anything to move) and waits for NCCL to take it; `out` is freed on failure. */
  private async into(out: { tensor: tf.Tensor }, call: string, run: () => unknown): Promise<tf.Tensor> {
    try {
      await this.afterSide(call);
      if (out.tensor.size > 0) await this.enqueued(call, run());
    } catch (e) {
      out.tensor.dispose();
      throw e;
    }
    return out.tensor;
  }

  async allReduceSum(t: tf.Tensor): Promise<tf.Tensor> {
    const call = 'ncclAllReduce';
    this.live(call);
    const dtype = this.dtype(t, call);
    const out = this.output(t.shape.slice(), t.dtype as 'float32' | 'int32');
    return this.into(out, call, () => this.nccl.fn.ncclAllReduce(this.ptr(t, call), this.ptr(out.info, call), t.size, dtype, NCCL_SUM, this.comm, this.stream));
  }

  startAllReduceSum(t: tf.Tensor): PendingCollective {
    const call = SIDE_CALL;
    this.live(call);
    const dtype = this.dtype(t, call);
    const out = this.output(t.shape.slice(), t.dtype as 'float32' | 'int32');
    // Kept: a start comes from inside the backward pass's tidy, whose end would free the sum before result().
    tf.keep(out.tensor);
    const what = `${call} on group ${this.name} (rank ${this.rank} of ${this.size})`;
    let launch: SideLaunch;
    try {
      launch = this.side.start(what, (stream) =>
        t.size > 0 ? this.nccl.fn.ncclAllReduce(this.ptr(t, call), this.ptr(out.info, call), t.size, dtype, NCCL_SUM, this.comm, stream) : NCCL_SUCCESS,
      );
    } catch (e) {
      out.tensor.dispose();
      throw e;
    }
    return {
      result: async () => {
        try {
          while (!launch.recorded) {
            this.live(call, false);
            await this.settle(what, collectiveTimeoutMs());
            this.side.issue();
          }
        } catch (e) {
          out.tensor.dispose();
          throw e;
        }
        this.side.joinCompute(launch);
        return out.tensor;
      },
    };
  }

  /**
   * Before a collective on the compute stream: every started one issued, and the compute stream ordered after the
   * side stream, so the group sees this rank's collectives in the order they were called.
   */
  private async afterSide(what: string): Promise<void> {
    while (this.side.pending) {
      this.live(what, false);
      await this.settle(what, collectiveTimeoutMs());
      this.side.issue();
    }
    this.side.joinComputeAll();
  }

  async allGather(t: tf.Tensor): Promise<tf.Tensor> {
    const call = 'ncclAllGather';
    this.live(call);
    const dtype = this.dtype(t, call);
    const shape = t.shape.length ? [t.shape[0] * this.size, ...t.shape.slice(1)] : [this.size];
    const out = this.output(shape, t.dtype as 'float32' | 'int32');
    return this.into(out, call, () => this.nccl.fn.ncclAllGather(this.ptr(t, call), this.ptr(out.info, call), t.size, dtype, this.comm, this.stream));
  }

  async reduceScatter(t: tf.Tensor): Promise<tf.Tensor> {
    const call = 'ncclReduceScatter';
    this.live(call);
    const dtype = this.dtype(t, call);
    if (!t.shape.length || t.shape[0] % this.size !== 0)
      throw new CollectiveError(`${call} on group ${this.name}: axis 0 of [${t.shape}] does not divide by the group size ${this.size}`, [this.rank]);
    const out = this.output([t.shape[0] / this.size, ...t.shape.slice(1)], t.dtype as 'float32' | 'int32');
    return this.into(out, call, () =>
      this.nccl.fn.ncclReduceScatter(this.ptr(t, call), this.ptr(out.info, call), t.size / this.size, dtype, NCCL_SUM, this.comm, this.stream),
    );
  }

  async exchange(sends: PeerSend[], receives: PeerReceive[]): Promise<tf.Tensor[]> {
    this.live('ncclSend/ncclRecv');
    const outs = receives.map((r) => this.output(r.shape.slice(), r.dtype ?? 'float32'));
    let failure: unknown = null;
    try {
      await this.afterSide('ncclSend/ncclRecv');
      this.nccl.check('ncclGroupStart', this.nccl.fn.ncclGroupStart());
    } catch (e) {
      for (const o of outs) o.tensor.dispose();
      throw e;
    }
    // Inside the group each call only queues its work (ncclSuccess or an error, never ncclInProgress); ncclGroupEnd launches it.
    try {
      for (const s of sends) {
        if (s.tensor.size > 0) {
          const call = `ncclSend(to rank ${s.peer})`;
          this.nccl.check(
            `${call} on group ${this.name} (rank ${this.rank} of ${this.size})`,
            this.nccl.fn.ncclSend(this.ptr(s.tensor, 'ncclSend'), s.tensor.size, this.dtype(s.tensor, 'ncclSend'), s.peer, this.comm, this.stream),
          );
        }
      }
      receives.forEach((r, i) => {
        if (outs[i].tensor.size > 0)
          this.nccl.check(
            `ncclRecv(from rank ${r.peer}) on group ${this.name} (rank ${this.rank} of ${this.size})`,
            this.nccl.fn.ncclRecv(this.ptr(outs[i].info, 'ncclRecv'), outs[i].tensor.size, NCCL_DTYPE[r.dtype ?? 'float32'], r.peer, this.comm, this.stream),
          );
      });
    } catch (e) {
      failure = e;
    }
    try {
      // The group must be closed even when a call inside it failed, or NCCL's next call on this thread joins it.
      await this.enqueued('ncclGroupEnd (send/receive)', this.nccl.fn.ncclGroupEnd());
    } catch (e) {
      failure ??= e;
    }
    if (failure) {
      for (const o of outs) o.tensor.dispose();
      throw failure;
    }
    return outs.map((o) => o.tensor);
  }

  async synchronize(timeoutMs = collectiveTimeoutMs()): Promise<void> {
    this.live('synchronize', false);
    await this.afterSide('synchronize');
    return this.waitFor({ what: 'the collectives', stream: true, timeoutMs });
  }

  /**
   * The one wait of this communicator, polled between turns of the event loop: until NCCL's state is ncclSuccess
   * (not ncclInProgress) and, with `stream`, the backend's stream has run everything enqueued on it. An
   * asynchronous error (a peer failed or left) or a wait past `timeoutMs` aborts the communicator and throws a
   * CollectiveError naming the group and this rank, and the rank behind it where the group's probes can tell.
   */
  private async waitFor(o: { what: string; stream: boolean; timeoutMs: number; stuck?: string }): Promise<void> {
    const start = performance.now();
    for (;;) {
      // With `stream`: the side stream (when there is one) and then the compute stream.
      let q = o.stream && this.side.handle ? streamQuery(this.side.handle) : CUDA_SUCCESS;
      if (o.stream && q === CUDA_SUCCESS) q = streamQuery(this.stream);
      const state = [0];
      this.nccl.check('ncclCommGetAsyncError', this.nccl.fn.ncclCommGetAsyncError(this.comm, state));
      if (state[0] !== NCCL_SUCCESS && state[0] !== NCCL_IN_PROGRESS) {
        const text = this.nccl.fn.ncclGetErrorString(state[0]);
        const detail = new NcclError('the group', state[0], typeof text === 'string' ? text : 'no description').message;
        const err = new CollectiveError(
          `group ${this.name}, rank ${this.rank} of ${this.size}: NCCL reported an asynchronous error during ${o.what}: ${detail}. A peer rank failed or left; the launcher's log names a worker that died`,
          [this.rank],
        );
        this.abort(err);
        throw err;
      }
      if (q === CUDA_SUCCESS && state[0] === NCCL_SUCCESS) return;
      if (q !== CUDA_SUCCESS && q !== CUDA_ERROR_NOT_READY) this.backend.driver.check('cuStreamQuery (waiting for NCCL)', q);
      const waited = performance.now() - start;
      if (waited > o.timeoutMs) {
        // Ask the group who is behind (bounded) before giving up, so that the error can name the rank.
        const report = this.diagnoseHang ? await this.diagnoseHang(this.issued).catch(() => null) : null;
        const why = report ? report.text : (o.stuck ?? "a peer rank hung or died; NCCL does not say which, the launcher's log names a worker that died");
        const err = new CollectiveError(
          `group ${this.name}, rank ${this.rank} of ${this.size}: ${o.what} did not finish within ${seconds(o.timeoutMs)} (DISTILL_COLLECTIVE_TIMEOUT_S): ${why}`,
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
    // ncclCommAbort stops NCCL's thread and kernels (a join or launch still in progress included) and frees the
    // communicator; a failure to abort leaves nothing to do.
    this.nccl.fn.ncclCommAbort(this.comm);
  }

  destroy(): void {
    if (this.aborted || this.destroyed) return;
    this.destroyed = true;
    // Blocking in every mode (NCCL makes a destroy's group blocking); every call above returned with the state
    // settled, which ncclCommDestroy requires, and the run's last synchronize has drained the stream.
    this.nccl.check(`ncclCommDestroy(group ${this.name})`, this.nccl.fn.ncclCommDestroy(this.comm));
    this.side.release();
  }
}
