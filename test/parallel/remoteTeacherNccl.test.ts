/**
 * The remote teacher's head and hidden states over the pair's communicator (nccl/teacherLink.ts), on CPU with the
 * in-process fake standing in for NCCL, against the frames path the CPU backends keep:
 *
 * - the same micro-batches give bit-identical hidden states, heads and losses either way;
 * - one teacher serves two students, each on its own pair, and never sends before that student has posted the
 *   receive (NCCL's send would hold the teacher's stream: a lagging student would stall the other one);
 * - a student that expects another shape than the teacher holds says so, naming both, at once; an answer out of
 *   request order is named a bug;
 * - a teacher that stops answering, or stops in the middle of a transfer, ends the student's wait within the
 *   bound with an error naming the teacher worker.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { concatMap, from, lastValueFrom, map, of, timer, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { attachStudent, klLoss } from '../../operators/index.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { RemoteTeacher } from '../../src/parallel/remoteTeacher.ts';
import { serveTeacher, type TeacherForward } from '../../src/parallel/teacherServer.ts';
import type { BootstrapOptions } from '../../src/parallel/nccl/bootstrap.ts';
import type { Communicator, PeerReceive, PeerSend, PendingCollective } from '../../src/parallel/nccl/communicator.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import { TeacherLinkError } from '../../src/parallel/nccl/teacherLink.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import type { WorkerMessage } from '../../src/runtime/messages.ts';
import { TransportClosedError, type Transport } from '../../src/runtime/transport.ts';
import type { TeacherBatch, TokenBatch } from '../../src/train/batch.ts';
import { fixtureBatches } from '../helpers/fixtureBatches.ts';
import { fixture } from '../helpers/fixtures.ts';

await selectBackend('cpu', { log: null });
const teacherModel = await loadModel(fixture('llama-teacher'), { trainable: false });
const studentModel = await loadModel(fixture('llama-student'), { trainable: true });

/** Short bounds, so that a wait that ends on its bound ends quickly. */
const TIMEOUT_MS = 300;
const PROBE_MS = 100;

/** Sees (and may withhold) what one end of a pair does on the communicator. */
class WatchedCommunicator implements Communicator {
  constructor(
    private readonly inner: Communicator,
    private readonly onExchange: (sends: PeerSend[], receives: PeerReceive[]) => 'pass' | 'withhold',
  ) {}
  get rank(): number {
    return this.inner.rank;
  }
  get size(): number {
    return this.inner.size;
  }
  get describe(): string {
    return this.inner.describe;
  }
  get issued(): number {
    return this.inner.issued;
  }
  diagnoseHang?: Communicator['diagnoseHang'];
  allReduceSum = (t: tf.Tensor): Promise<tf.Tensor> => this.inner.allReduceSum(t);
  startAllReduceSum = (t: tf.Tensor): PendingCollective => this.inner.startAllReduceSum(t);
  allGather = (t: tf.Tensor): Promise<tf.Tensor> => this.inner.allGather(t);
  reduceScatter = (t: tf.Tensor): Promise<tf.Tensor> => this.inner.reduceScatter(t);
  exchange(sends: PeerSend[], receives: PeerReceive[]): Promise<tf.Tensor[]> {
    // A withheld send is one that NCCL took and never delivered (the teacher hung in the middle of it).
    if (this.onExchange(sends, receives) === 'withhold') return Promise.resolve([]);
    return this.inner.exchange(sends, receives);
  }
  synchronize = (timeoutMs?: number): Promise<void> => this.inner.synchronize(timeoutMs);
  abort = (reason: Error): void => this.inner.abort(reason);
  destroy = (): void => this.inner.destroy();
}

interface Setup {
  students: number;
  /** Wraps each pair's teacher end (rank 0) or student end (rank 1) on the fake; by default they are used as they are. */
  watch?: (comm: Communicator, pair: string) => Communicator;
  /** The teacher's transport as the teacher sees it (to make it go silent). */
  teacherTransport?: (t: Transport) => Transport;
  teacher?: TeacherForward;
  /** Per student: how long it waits before reading each batch. */
  lagMs?: number[];
}

/** What a student took from its teacher stage, read back. */
interface Taken {
  hidden: Float32Array[];
  head: Float32Array;
  losses: number[];
}

/** The fake's bootstrap: one two-rank group per pair, made when the pair's first rank joins. */
function fakePairs(watch?: Setup['watch']): BootstrapOptions {
  const groups = new Map<string, FakeCommunicatorGroup>();
  return {
    unavailable: () => null,
    makeId: () => new Uint8Array(128),
    join: (_id, size, rank, name) => {
      let g = groups.get(name);
      if (!g) groups.set(name, (g = new FakeCommunicatorGroup(size, TIMEOUT_MS)));
      const m = g.members[rank];
      return watch ? watch(m, name) : m;
    },
    probeWaitMs: PROBE_MS,
  };
}

/**
 * A teacher worker (the last one) serving `students` workers, every one in this process, over the frames (the CPU
 * backend's choice) or the fake communicator; each student takes `batches` through its teacher stage and the loss.
 */
async function serve(
  path: 'frames' | 'device',
  s: Setup,
  batches: (student: number) => TokenBatch[],
): Promise<{ taken: Taken[]; lines: string[]; served: number }> {
  const transports = localTransports(s.students + 1);
  const teacherWorker = s.students;
  const bootstrap = path === 'device' ? fakePairs(s.watch) : undefined;
  const lines: string[] = [];
  const teacherSide = s.teacherTransport ? s.teacherTransport(transports[teacherWorker]) : transports[teacherWorker];
  const serving = serveTeacher(
    teacherSide,
    s.teacher ?? teacherModel,
    Array.from({ length: s.students }, (_, i) => i),
    { log: (l) => lines.push(l), bootstrap, timeoutMs: TIMEOUT_MS },
  );
  serving.catch(() => {});
  const remotes = transports.slice(0, s.students).map((t) => new RemoteTeacher(t, teacherWorker, { bootstrap, timeoutMs: TIMEOUT_MS }));
  try {
    const taken = await Promise.all(remotes.map((r, i) => takeThrough(r, batches(i), s.lagMs?.[i] ?? 0)));
    transports[teacherWorker].close(new TransportClosedError('the students are done'));
    return { taken, lines, served: await serving };
  } finally {
    for (const r of remotes) r.dispose();
    for (const t of transports) t.close(new TransportClosedError('test over'));
  }
}

async function takeThrough(remote: RemoteTeacher, batches: TokenBatch[], lagMs: number): Promise<Taken> {
  const hidden: Float32Array[] = [];
  let head: Float32Array | null = null;
  const losses = await lastValueFrom(
    from(batches).pipe(
      concatMap((b) => (lagMs ? timer(lagMs).pipe(map(() => b)) : of(b))),
      remote.stage(),
      concatMap(async (b: TeacherBatch) => {
        if (b.teacher?.kind !== 'hidden') throw new Error('the remote stage gave no hidden states');
        hidden.push((await b.teacher.hidden.data()) as Float32Array);
        head ??= (await b.teacher.head.data()) as Float32Array;
        return b;
      }),
      attachStudent(studentModel),
      klLoss({ ...DEFAULT_KD_LOSS, kdRatio: 1, chunkSize: 7 }),
      concatMap(async (b) => {
        const parts = b.loss();
        const v = (await parts.total.data())[0];
        tf.dispose([parts.total, parts.kd, parts.ce]);
        if (b.teacher?.kind === 'hidden') b.teacher.hidden.dispose();
        return v;
      }),
      toArray(),
    ),
  );
  return { hidden, head: head!, losses };
}

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

function assertSameBits(got: Taken, want: Taken, what: string): void {
  assert.deepEqual(bits(got.head), bits(want.head), `${what}: the head`);
  assert.equal(got.hidden.length, want.hidden.length, `${what}: micro-batches`);
  got.hidden.forEach((h, i) => assert.deepEqual(bits(h), bits(want.hidden[i]), `${what}: hidden states of micro-batch ${i}`));
  assert.deepEqual(new Uint32Array(Float32Array.from(got.losses).buffer), new Uint32Array(Float32Array.from(want.losses).buffer), `${what}: losses`);
}

async function rejectsWithin(p: Promise<unknown>, ms: number, check: (e: Error) => void): Promise<void> {
  const start = performance.now();
  await assert.rejects(p, (e: Error) => {
    check(e);
    return true;
  });
  const took = performance.now() - start;
  assert.ok(took < ms, `the wait ended after ${took.toFixed(0)} ms, not within ${ms}`);
}

test('one student: the communicator path gives the frames path’s hidden states, head and losses, bit for bit', async () => {
  // 3 steps of 2 micro-batches [1, 17].
  const frames = await serve('frames', { students: 1 }, () => fixtureBatches(3, 2));
  // On the communicator path no values cross the transport: the teacher sends announcements, never teacherHead or teacherHidden.
  const onTransport: string[] = [];
  const counting = (t: Transport): Transport => ({
    ...t,
    rank: t.rank,
    send: (to: number, m: WorkerMessage) => {
      if (m.kind.startsWith('teacher')) onTransport.push(m.kind);
      t.send(to, m);
    },
  });
  let tensors = 0;
  const watch = (comm: Communicator): Communicator =>
    new WatchedCommunicator(comm, (sends) => {
      tensors += sends.length;
      return 'pass';
    });
  const device = await serve('device', { students: 1, teacherTransport: counting, watch }, () => fixtureBatches(3, 2));
  assert.equal(frames.served, 6);
  assert.equal(device.served, 6);
  assert.equal(tensors, 7, 'the head and 6 micro-batches over the communicator');
  assert.deepEqual(onTransport, ['teacherHeadAnnounced', ...Array<string>(6).fill('teacherHiddenHeld')]);
  assertSameBits(device.taken[0], frames.taken[0], 'communicator vs frames');
  assert.match(frames.lines[0], /teacher worker 1 → student worker 0: the head and hidden states as msgpackr frames .* because the cpu backend/);
  assert.match(device.lines[0], /teacher worker 1 → student worker 0: the head and hidden states over in-process fake, device to device/);
});

test('one teacher serves two students, each on its own pair, and sends to a student only after it has posted the receive', async () => {
  // Per pair: receives the student has posted, tensors the teacher has sent (the head first, which needs no handshake).
  const posted = new Map<string, number>();
  const sent = new Map<string, number>();
  const early: string[] = [];
  const watch = (comm: Communicator, pair: string): Communicator =>
    new WatchedCommunicator(comm, (sends, receives) => {
      if (receives.length) posted.set(pair, (posted.get(pair) ?? 0) + receives.length);
      if (sends.length) {
        const n = (sent.get(pair) ?? 0) + sends.length;
        sent.set(pair, n);
        if (n > 1 && (posted.get(pair) ?? 0) < n) early.push(`${pair}: send ${n} before its receive`);
      }
      return 'pass';
    });
  // Student 1 reads each batch 15 ms after student 0 has all of its own, so the teacher holds states for both at once.
  const frames = await serve('frames', { students: 2, lagMs: [0, 15] }, () => fixtureBatches(2, 2));
  const device = await serve('device', { students: 2, lagMs: [0, 15], watch }, () => fixtureBatches(2, 2));
  assert.equal(device.served, 8);
  assert.deepEqual(early, []);
  assert.deepEqual([...sent.values()], [5, 5], 'the head and 4 micro-batches to each student');
  assert.deepEqual([...posted.values()], [5, 5]);
  for (const s of [0, 1]) assertSameBits(device.taken[s], frames.taken[s], `student ${s}`);
  assert.deepEqual(
    device.lines.map((l) => l.split(':')[0]),
    ['teacher worker 2 → student worker 0', 'teacher worker 2 → student worker 1'],
  );
});

test('a student expecting another shape than the teacher holds fails at once, naming both sides and both shapes', async () => {
  // This teacher drops the last position: it holds [16, hidden] where the student expects [17, hidden].
  const short: TeacherForward = {
    headWeight: () => teacherModel.headWeight(),
    hidden: (ids) => tf.tidy(() => tf.slice(teacherModel.hidden(ids), [0, 0, 0], [-1, ids.shape[1] - 1, -1]) as tf.Tensor3D),
  };
  const hidden = teacherModel.headWeight().shape[1];
  await rejectsWithin(
    serve('device', { students: 1, teacher: short }, () => fixtureBatches(1, 2)),
    TIMEOUT_MS,
    (e) => {
      assert.ok(e instanceof TeacherLinkError, String(e));
      assert.equal(e.teacherWorker, 1);
      assert.match(e.message, new RegExp(`teacher worker 1 holds the hidden states of request 0 \\(step 0, micro-batch 1 of 2\\) as \\[16, ${hidden}\\]`));
      assert.match(e.message, new RegExp(`student worker 0 expects \\[17, ${hidden}\\]`));
    },
  );
});

test('an answer out of request order is named as a bug, not taken', async () => {
  const swapped = (t: Transport): Transport => ({
    ...t,
    rank: t.rank,
    send: (to: number, m: WorkerMessage) => t.send(to, m.kind === 'teacherHiddenHeld' && m.id === 0 ? { ...m, id: 1 } : m),
  });
  await rejectsWithin(
    serve('device', { students: 1, teacherTransport: swapped }, () => fixtureBatches(1, 2)),
    TIMEOUT_MS,
    (e) => {
      assert.ok(e instanceof TeacherLinkError, String(e));
      assert.match(
        e.message,
        /teacher worker 1 answered request 1 while request 0 was due \(step 0, micro-batch 1 of 2\): the teacher stream is out of order \(a bug\)/,
      );
    },
  );
});

test('a teacher that stops answering ends the student’s wait within the bound, naming the teacher worker', async () => {
  // After its first answer the teacher goes silent: no announcements, no answers to the liveness probe.
  let answers = 0;
  const silent = (t: Transport): Transport => ({
    rank: t.rank,
    send: (to: number, m: WorkerMessage) => {
      if (m.kind === 'teacherHiddenHeld' && ++answers > 1) return;
      if (m.kind === 'collectiveProbeReply') return;
      t.send(to, m);
    },
    receive: (from, kind) => t.receive(from, kind),
    receiveAny: (kind) => t.receiveAny(kind),
    close: (reason) => t.close(reason),
  });
  await rejectsWithin(
    serve('device', { students: 1, teacherTransport: silent }, () => fixtureBatches(2, 2)),
    TIMEOUT_MS + PROBE_MS + 1000,
    (e) => {
      assert.ok(e instanceof TeacherLinkError, String(e));
      assert.match(
        e.message,
        /teacher worker 1 did not announce the hidden states of request 1 \(step 0, micro-batch 2 of 2\) within 0\.3 s \(DISTILL_COLLECTIVE_TIMEOUT_S\)/,
      );
      assert.match(e.message, /rank 0 \(worker 1\) did not answer within 0\.1 s: it is hung/);
    },
  );
});

test('a teacher that stops in the middle of a transfer ends the student’s wait within the bound, naming the teacher worker', async () => {
  // The teacher announces request 1 and takes the student's receive, and its send never arrives.
  const watch = (comm: Communicator): Communicator => {
    let sends = 0;
    return new WatchedCommunicator(comm, (s) => (comm.rank === 0 && s.length && ++sends === 3 ? 'withhold' : 'pass'));
  };
  await rejectsWithin(
    serve('device', { students: 1, watch }, () => fixtureBatches(2, 2)),
    TIMEOUT_MS + 1000,
    (e) => {
      assert.ok(e instanceof TeacherLinkError, String(e));
      assert.equal(e.teacherWorker, 1);
      assert.match(
        e.message,
        /teacher worker 1 did not deliver the hidden states of request 1 \(step 0, micro-batch 2 of 2\): .*rank 0 did not arrive within 300 ms/,
      );
    },
  );
});

test('cleanup', () => {
  teacherModel.dispose();
  studentModel.dispose();
});
