/**
 * A communicator: the ranks of one group of the layout (the DP replicas, a TP group, two PP neighbours, a CP
 * group) and the collectives they run together on tensors. On `--backend cuda` it is NCCL, device to device on the
 * backend's stream (ncclCommunicator.ts); in tests it is an in-process fake with the same contract
 * (fakeCommunicator.ts). The CPU backends keep the ring all-reduce over the launcher's frames (ringAllReduce.ts).
 *
 * Every rank of the group calls the same collectives in the same order. Each returns a new tensor and leaves its
 * input alone; the caller disposes both. The promise settles once the work is enqueued (NCCL) or done (the fake):
 * `synchronize` waits for completion within a bound, so a rank that died or hangs ends the wait with an error
 * instead of blocking the process.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { ConfigError, DistillError } from '../../errors.ts';
import type { HangReport } from './liveness.ts';

export interface PeerSend {
  peer: number;
  tensor: tf.Tensor;
}

export interface PeerReceive {
  peer: number;
  shape: number[];
  dtype?: 'float32' | 'int32';
}

/** A collective started without waiting (startAllReduceSum). */
export interface PendingCollective {
  /**
   * The result, ordered before the caller's work enqueued from now on (NCCL: the compute stream waits for the
   * collective's event). The input given at the start must stay alive until this has resolved.
   */
  result(): Promise<tf.Tensor>;
}

export interface Communicator {
  /** This rank within the group, and the group's size. */
  readonly rank: number;
  readonly size: number;
  /** What runs it, for log lines: "NCCL 2.28.5", "in-process fake". */
  readonly describe: string;
  /** How many collectives this rank has issued on it (what a probe of the group compares, liveness.ts). */
  readonly issued: number;
  /** Asks the group who is behind a collective that does not finish (set by bootstrap.ts); its text goes into the timeout's error. */
  diagnoseHang?: (issued: number) => Promise<HangReport>;
  /** Element-wise sum over the ranks; every rank gets the same values. */
  allReduceSum(t: tf.Tensor): Promise<tf.Tensor>;
  /**
   * allReduceSum started at once, from synchronous code (a gradient hook in the middle of the backward pass), and
   * run beside the caller's later work: NCCL takes it on a second stream after an event on the compute stream, so
   * it overlaps the kernels enqueued after it. Collectives started this way keep their order among themselves and
   * with the others on the communicator.
   */
  startAllReduceSum(t: tf.Tensor): PendingCollective;
  /** Every rank's tensor stacked along axis 0 in rank order: [size·d0, ...rest]. */
  allGather(t: tf.Tensor): Promise<tf.Tensor>;
  /** The sum over the ranks, cut along axis 0 into `size` equal parts; rank r gets part r. d0 must divide by size. */
  reduceScatter(t: tf.Tensor): Promise<tf.Tensor>;
  /** Point-to-point: these sends and receives as one group (no deadlock between two ranks sending to each other). Returns the received tensors in `receives` order. */
  exchange(sends: PeerSend[], receives: PeerReceive[]): Promise<tf.Tensor[]>;
  /** Waits until the enqueued collectives are done; throws a CollectiveError (naming the rank where known) on failure or after `timeoutMs`. */
  synchronize(timeoutMs?: number): Promise<void>;
  /** Ends the communicator at once (a peer failed, the run stops): pending and later calls fail with `reason`. */
  abort(reason: Error): void;
  /** Frees it after the last collective. */
  destroy(): void;
}

/** A collective failed or did not finish: `ranks` names the ranks at fault where the communicator knows them. */
export class CollectiveError extends DistillError {
  constructor(
    message: string,
    readonly ranks: readonly number[] = [],
  ) {
    super(message);
  }
}

/** How long a rank waits for a collective to finish before it gives up (DISTILL_COLLECTIVE_TIMEOUT_S, default 600). */
export function collectiveTimeoutMs(env: Record<string, string | undefined> = process.env): number {
  const v = env.DISTILL_COLLECTIVE_TIMEOUT_S;
  const s = v === undefined || v === '' ? 600 : Number(v);
  if (!(s > 0) || !Number.isFinite(s)) throw new ConfigError(`DISTILL_COLLECTIVE_TIMEOUT_S=${v}: give a positive number of seconds`);
  return s * 1000;
}
