/**
 * The second stream of an NCCL communicator (ncclCommunicator.ts's startAllReduceSum), for collectives started
 * from synchronous code in the middle of the backward pass. A start records an event on the compute stream and
 * makes this stream wait for it (the kernels that made the input), then queues its NCCL call. The call goes out
 * only while NCCL's state is ncclSuccess (a non-blocking communicator refuses a call made while the previous one is
 * still in progress, this stream's or another's), in the order started; once NCCL has put it on the stream, an
 * event is recorded after it, for the compute stream to wait on.
 */
import type { CudaDriver, Handle } from '../../backend/cuda/driver.ts';
import { NCCL_IN_PROGRESS } from './ncclLibrary.ts';

/** One started collective: its NCCL call on a stream, and the event recorded after it once it is on the stream. */
export interface SideLaunch {
  what: string;
  run: (stream: Handle) => unknown;
  /** Set once the event is recorded (a handle may be null where a test stands in for the driver). */
  recorded: boolean;
  done: Handle;
}

export class SideStream {
  /** Made at the first start; the event that orders the two streams. */
  private stream: Handle = null;
  private ready: Handle = null;
  /** Started calls not yet issued, in order; the issued one whose call NCCL is still completing. */
  private readonly queued: SideLaunch[] = [];
  private completing: SideLaunch | null = null;

  constructor(
    private readonly driver: CudaDriver,
    /** NCCL's state of the communicator (ncclCommGetAsyncError), checked. */
    private readonly state: () => number,
    /** Throws NCCL's error for a result that is neither ncclSuccess nor ncclInProgress. */
    private readonly check: (what: string, result: number) => void,
  ) {}

  /** The stream, once made (for polling); null before the first start. */
  get handle(): Handle {
    return this.stream;
  }

  /** Some started call is not yet on the stream. */
  get pending(): boolean {
    return this.queued.length > 0 || this.completing !== null;
  }

  /** Orders `run` after the compute stream's work so far, queues it and issues what NCCL takes now. */
  start(what: string, run: (stream: Handle) => unknown): SideLaunch {
    this.stream ??= this.driver.createStream();
    this.ready ??= this.driver.createEvent(false);
    this.driver.record(this.ready);
    this.driver.waitEvent(this.stream, this.ready);
    const launch: SideLaunch = { what, run, recorded: false, done: null };
    this.queued.push(launch);
    this.issue();
    return launch;
  }

  /** Issues queued calls while NCCL is free, recording each one's event once NCCL has it on the stream. */
  issue(): void {
    while (this.pending) {
      const state = this.state();
      if (state === NCCL_IN_PROGRESS) return;
      this.check(this.completing?.what ?? this.queued[0].what, state);
      if (this.completing) {
        this.completing.done = this.driver.createEvent(false);
        this.driver.record(this.completing.done, this.stream);
        this.completing.recorded = true;
        this.completing = null;
      }
      const next = this.queued.shift();
      if (!next) return;
      const r = Number(next.run(this.stream));
      if (r !== NCCL_IN_PROGRESS) this.check(next.what, r);
      this.completing = next;
    }
  }

  /** The compute stream's later work waits for `launch`; its event is freed (CUDA keeps it until the wait is over). */
  joinCompute(launch: SideLaunch): void {
    this.driver.waitEvent(this.driver.stream, launch.done);
    this.driver.destroyEvent(launch.done);
  }

  /** The compute stream's later work waits for everything on this stream (all issued: `pending` is false). */
  joinComputeAll(): void {
    if (!this.stream) return;
    this.driver.record(this.ready, this.stream);
    this.driver.waitEvent(this.driver.stream, this.ready);
  }

  release(): void {
    if (this.ready) this.driver.destroyEvent(this.ready);
    // cuStreamDestroy returns at once; work still on the stream completes first.
    if (this.stream) this.driver.destroyStream(this.stream);
    this.stream = this.ready = null;
  }
}
