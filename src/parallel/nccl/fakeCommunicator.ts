/**
 * An in-process communicator group for tests on CPU: `size` members that meet in the same collectives, in order,
 * with NCCL's contract (communicator.ts) and its failure modes made visible. A rank that fails (`fail`, `abort`)
 * makes every pending and later collective on the others reject naming it; a rank that never arrives makes the
 * others reject after the timeout, naming the ranks that were missing. Two ranks that call different collectives
 * at the same position are a bug in the caller, reported with both names.
 *
 * Sums are taken in rank order in float32, as NCCL's ring does for two ranks; every member gets the same values.
 */
import * as tf from '@tensorflow/tfjs-core';
import { CollectiveError, type Communicator, type PeerReceive, type PeerSend, type PendingCollective } from './communicator.ts';

type Values = Float32Array | Int32Array;

interface Contribution {
  values: Values;
  shape: number[];
  dtype: 'float32' | 'int32';
}

interface Meeting {
  op: string;
  arrived: Map<number, Contribution>;
  waiters: Map<number, { resolve: (out: Share) => void; reject: (e: Error) => void }>;
}

/** What one rank gets back from a collective. */
interface Share {
  values: Values;
  shape: number[];
}

/** One call as the group saw it, for tests of ordering and bucket boundaries. */
export interface RecordedCall {
  rank: number;
  op: string;
  /** The call's position among this rank's collectives, from 0. */
  index: number;
  elements: number;
}

export class FakeCommunicatorGroup {
  readonly members: FakeCommunicator[];
  readonly calls: RecordedCall[] = [];
  private readonly meetings = new Map<number, Meeting>();
  private failure: { rank: number; reason: Error } | null = null;
  private readonly failureListeners = new Set<(e: CollectiveError) => void>();
  private readonly mail = new Map<string, Contribution[]>();
  private readonly mailWaiters = new Map<string, () => void>();

  constructor(
    readonly size: number,
    readonly timeoutMs = 2000,
  ) {
    this.members = Array.from({ length: size }, (_, r) => new FakeCommunicator(this, r));
  }

  /** Rank `rank` failed: every pending and later call of the group rejects naming it. */
  fail(rank: number, reason: Error): void {
    if (this.failure) return;
    this.failure = { rank, reason };
    const e = this.failureError();
    for (const l of [...this.failureListeners]) l(e);
  }

  private failureError(): CollectiveError {
    const f = this.failure!;
    // A rank that gives up because of a collective's error (a third rank hung) passes that error on unchanged.
    if (f.reason instanceof CollectiveError) return f.reason;
    return new CollectiveError(`rank ${f.rank} of the group failed: ${f.reason.message}`, [f.rank]);
  }

  /** Waits for `ready`, rejecting on a failure of the group or after the timeout with `missing()` named. */
  private wait<T>(what: string, register: (resolve: (v: T) => void, reject: (e: Error) => void) => void, missing: () => number[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failureError());
    return new Promise<T>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.failureListeners.delete(onFailure);
      };
      const onFailure = (e: CollectiveError): void => {
        done();
        reject(e);
      };
      const timer = setTimeout(() => {
        done();
        const m = missing();
        reject(new CollectiveError(`${what}: rank${m.length > 1 ? 's' : ''} ${m.join(', ')} did not arrive within ${this.timeoutMs} ms (hung or dead)`, m));
      }, this.timeoutMs);
      this.failureListeners.add(onFailure);
      register(
        (v) => {
          done();
          resolve(v);
        },
        (e) => {
          done();
          reject(e);
        },
      );
    });
  }

  /** Rank `rank` arrives at its `index`-th collective. */
  meet(rank: number, index: number, op: string, c: Contribution, combine: (all: Contribution[]) => (rank: number) => Share): Promise<tf.Tensor> {
    this.calls.push({ rank, op, index, elements: c.values.length });
    let m = this.meetings.get(index);
    if (!m) this.meetings.set(index, (m = { op, arrived: new Map(), waiters: new Map() }));
    if (m.op !== op) {
      const other = [...m.arrived.keys()][0];
      const e = new CollectiveError(
        `collective #${index}: rank ${rank} called ${op} while rank ${other} called ${m.op}; the ranks disagree on the order of collectives (a bug)`,
        [rank, other],
      );
      this.fail(rank, e);
      return Promise.reject(e);
    }
    const meeting = m;
    meeting.arrived.set(rank, c);
    const what = `${op} #${index} on rank ${rank}`;
    const p = this.wait<Share>(
      what,
      (resolve, reject) => meeting.waiters.set(rank, { resolve, reject }),
      () => this.members.map((x) => x.rank).filter((r) => !meeting.arrived.has(r)),
    );
    if (meeting.arrived.size === this.size) {
      const all = [...meeting.arrived.entries()].sort((a, b) => a[0] - b[0]).map(([, x]) => x);
      const sizes = new Set(all.map((x) => x.values.length));
      if (sizes.size > 1) {
        const e = new CollectiveError(
          `${op} #${index}: the ranks gave ${all.map((x, r) => `rank ${r} ${x.values.length}`).join(', ')} elements; they must agree`,
          [...all.keys()],
        );
        for (const w of meeting.waiters.values()) w.reject(e);
      } else {
        const share = combine(all);
        this.meetings.delete(index);
        for (const [r, w] of meeting.waiters) w.resolve(share(r));
      }
    }
    return p.then((out) => tf.tensor(out.values, out.shape, c.dtype));
  }

  post(from: number, to: number, c: Contribution): void {
    const key = `${from}->${to}`;
    const q = this.mail.get(key) ?? [];
    q.push(c);
    this.mail.set(key, q);
    this.mailWaiters.get(key)?.();
  }

  take(from: number, to: number): Promise<Contribution> {
    const key = `${from}->${to}`;
    const now = this.mail.get(key)?.shift();
    if (now) return Promise.resolve(now);
    return this.wait<Contribution>(
      `receive on rank ${to} from rank ${from}`,
      (resolve) => {
        this.mailWaiters.set(key, () => {
          const c = this.mail.get(key)?.shift();
          if (c) {
            this.mailWaiters.delete(key);
            resolve(c);
          }
        });
      },
      () => [from],
    );
  }

  get failed(): boolean {
    return this.failure !== null;
  }
}

function contribution(t: tf.Tensor): Contribution {
  if (t.dtype !== 'float32' && t.dtype !== 'int32') throw new CollectiveError(`collectives carry float32 or int32 tensors, not ${t.dtype}`);
  const values = t.dataSync() as Values;
  return { values: values.slice(), shape: t.shape.slice(), dtype: t.dtype };
}

function sum(all: Contribution[]): Values {
  const out = all[0].dtype === 'float32' ? new Float32Array(all[0].values.length) : new Int32Array(all[0].values.length);
  for (const c of all) for (let i = 0; i < out.length; i++) out[i] += c.values[i];
  return out;
}

export class FakeCommunicator implements Communicator {
  readonly describe = 'in-process fake';
  private index = 0;
  /** Point-to-point calls count as issued, as in ncclCommunicator, but take no collective index (their peers differ). */
  private exchanges = 0;

  constructor(
    private readonly group: FakeCommunicatorGroup,
    readonly rank: number,
  ) {}

  get size(): number {
    return this.group.size;
  }

  get issued(): number {
    return this.index + this.exchanges;
  }

  allReduceSum(t: tf.Tensor): Promise<tf.Tensor> {
    return this.group.meet(this.rank, this.index++, 'allReduceSum', contribution(t), (all) => {
      const s = sum(all);
      return () => ({ values: s.slice(), shape: all[0].shape });
    });
  }

  startAllReduceSum(t: tf.Tensor): PendingCollective {
    const sum = this.allReduceSum(t);
    // Settled here whether or not result() is ever asked for (a step that failed later): no unhandled rejection.
    sum.catch(() => {});
    return { result: () => sum };
  }

  allGather(t: tf.Tensor): Promise<tf.Tensor> {
    return this.group.meet(this.rank, this.index++, 'allGather', contribution(t), (all) => {
      const n = all[0].values.length;
      const out = all[0].dtype === 'float32' ? new Float32Array(n * all.length) : new Int32Array(n * all.length);
      all.forEach((c, r) => out.set(c.values, r * n));
      const shape = [all[0].shape[0] * all.length, ...all[0].shape.slice(1)];
      return () => ({ values: out.slice(), shape });
    });
  }

  reduceScatter(t: tf.Tensor): Promise<tf.Tensor> {
    if (t.shape[0] % this.size !== 0)
      return Promise.reject(
        new CollectiveError(`reduceScatter on rank ${this.rank}: axis 0 (${t.shape[0]}) does not divide by the group size ${this.size}`, [this.rank]),
      );
    return this.group.meet(this.rank, this.index++, 'reduceScatter', contribution(t), (all) => {
      const s = sum(all);
      const part = s.length / all.length;
      const shape = [all[0].shape[0] / all.length, ...all[0].shape.slice(1)];
      return (r) => ({ values: s.slice(r * part, (r + 1) * part), shape });
    });
  }

  async exchange(sends: PeerSend[], receives: PeerReceive[]): Promise<tf.Tensor[]> {
    this.exchanges++;
    for (const s of sends) this.group.post(this.rank, s.peer, contribution(s.tensor));
    const out: tf.Tensor[] = [];
    for (const r of receives) {
      const c = await this.group.take(r.peer, this.rank);
      const want = r.shape.reduce((a, b) => a * b, 1);
      if (c.values.length !== want)
        throw new CollectiveError(`rank ${this.rank} expected [${r.shape}] (${want} elements) from rank ${r.peer}, which sent [${c.shape}]`, [r.peer]);
      out.push(tf.tensor(c.values, r.shape, r.dtype ?? c.dtype));
    }
    return out;
  }

  async synchronize(): Promise<void> {
    // Every call above settles only when its work is done.
  }

  abort(reason: Error): void {
    this.group.fail(this.rank, reason);
  }

  destroy(): void {}
}
