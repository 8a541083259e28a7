/**
 * NCCL's calling conventions through koffi, checked on any machine with a C compiler: a stub libnccl.so.2 built
 * here (same prototypes as nccl.h, host memory standing in for device memory, and NCCL's non-blocking behaviour:
 * calls answer ncclInProgress, and a call made before the state is ncclSuccess again is refused) is loaded the
 * way the real one is (DISTILL_CUDA_LIBS first). The bindings pass the ncclUniqueId by value and NCCL 2.28's
 * ncclConfig_t field by field, fill the communicator and version out-parameters, join without blocking the event
 * loop, and turn a failing result into an NcclError with NCCL's own words; a join that fails or never finishes
 * ends within its bound, aborted. The communicator itself then runs on the cpu backend, its tensors' host memory
 * standing in for device memory: every collective's shapes and values, with and without ncclInProgress answers,
 * the bucketed all-reduce, an asynchronous error that aborts it, and a stream that never finishes, ended within
 * the bound. Without NCCL anywhere, loading says libnccl.so.2 is missing and how to install it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CUDA_LIBRARIES, findLibrary, koffi } from '../../src/backend/cuda/libraries.ts';
import type { CudaBackend } from '../../src/backend/cuda/backend.ts';
import { BackendError } from '../../src/errors.ts';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { CollectiveError, type Communicator, type PendingCollective } from '../../src/parallel/nccl/communicator.ts';
import { allReduceGradientBuckets } from '../../src/parallel/nccl/bucketedAllReduce.ts';
import { planGradientBuckets } from '../../src/parallel/nccl/gradientBucketPlan.ts';

const STUB = `
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
typedef struct { char internal[128]; } ncclUniqueId;
/* NCCL 2.28's ncclConfig_t (nccl.h, struct ncclConfig_v22800), as a C compiler lays it out. */
typedef struct {
  size_t size; unsigned int magic; unsigned int version;
  int blocking, cgaClusterSize, minCTAs, maxCTAs; const char *netName; int splitShare, trafficClass;
  const char *commName; int collnetEnable, CTAPolicy, shrinkShare, nvlsCTAs, nChannelsPerNetPeer, nvlinkCentricSched;
} ncclConfig_t;
/* A non-blocking communicator as NCCL keeps it: in progress until its thread is done (here: a time, or a number of
   polls), then ncclSuccess or the error it met. */
typedef struct { int n, rank; double ready_at; int polls; int result; } comm_t;
static int async_error = 0, op_polls = 0, init_ms = 150, init_result = 0, polls_seen = 0, aborts = 0, early_calls = 0;
static uint64_t pending_send = 0, pending_recv = 0;
static size_t pending_count = 0;
static comm_t *group_comm = 0;
static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
void stubSetAsyncError(int e) { async_error = e; }
/* Every later call answers ncclInProgress and stays so for n polls of ncclCommGetAsyncError. */
void stubSetOpPolls(int n) { op_polls = n; }
/* The next joins take ms milliseconds (INT_MAX: never finish) and end with this result. */
void stubSetInit(int ms, int result) { init_ms = ms; init_result = result; }
int stubPolls(void) { return polls_seen; }
int stubAborts(void) { return aborts; }
/* Calls made while the communicator was still in progress: NCCL refuses them ("use before ncclSuccess"). */
int stubEarlyCalls(void) { return early_calls; }
static int busy(comm_t *c) { return c->polls > 0 || now_ms() < c->ready_at; }
static int started(comm_t *c) { if (op_polls == 0) return 0; c->polls = op_polls; return 7; }
int ncclGetVersion(int *v) { *v = 22805; return 0; }
int ncclGetUniqueId(ncclUniqueId *id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3); return 0; }
int stubConfigSize(void) { return (int)sizeof(ncclConfig_t); }
static int config_ok(ncclConfig_t *c) {
  return c && c->size == sizeof(ncclConfig_t) && c->magic == 0xcafebeef && c->version == 22800 && c->blocking == 0 &&
    c->cgaClusterSize == INT_MIN && c->minCTAs == INT_MIN && c->maxCTAs == INT_MIN && c->netName == NULL &&
    c->splitShare == INT_MIN && c->trafficClass == INT_MIN && c->commName == NULL && c->collnetEnable == INT_MIN &&
    c->CTAPolicy == INT_MIN && c->shrinkShare == INT_MIN && c->nvlsCTAs == INT_MIN && c->nChannelsPerNetPeer == INT_MIN &&
    c->nvlinkCentricSched == INT_MIN;
}
int ncclCommInitRankConfig(void **comm, int n, ncclUniqueId id, int rank, ncclConfig_t *config) {
  if (!config_ok(config)) return 4;
  for (int i = 0; i < 128; i++) if (id.internal[i] != (char)(i * 3)) return 4;
  comm_t *c = calloc(1, sizeof *c); c->n = n; c->rank = rank; c->result = init_result;
  c->ready_at = init_ms == INT_MAX ? 1e300 : now_ms() + init_ms; *comm = c; return 7; }
#define READY(c) do { if (busy((comm_t *)(c))) { early_calls++; return 4; } } while (0)
/* One rank: every collective is a copy of 4-byte elements (float32 = 7, int32 = 2); op must be sum (0). */
static int ok(void *comm, int dtype) { return ((comm_t *)comm)->n == 1 && (dtype == 7 || dtype == 2); }
int ncclAllReduce(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) {
  READY(comm); if (!ok(comm, dtype) || op != 0) return 4; memcpy((void *)r, (void *)s, count * 4); return started(comm); }
int ncclAllGather(uint64_t s, uint64_t r, size_t count, int dtype, void *comm, void *stream) {
  READY(comm); if (!ok(comm, dtype)) return 4; memcpy((void *)r, (void *)s, count * 4); return started(comm); }
int ncclReduceScatter(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) {
  READY(comm); if (!ok(comm, dtype) || op != 0) return 4; memcpy((void *)r, (void *)s, count * 4); return started(comm); }
static int in_group = 0;
int ncclGroupStart(void) { in_group = 1; pending_send = pending_recv = 0; group_comm = 0; return 0; }
int ncclSend(uint64_t s, size_t count, int dtype, int peer, void *comm, void *stream) {
  READY(comm); if (!in_group || peer != 0 || !ok(comm, dtype)) return 5; pending_send = s; pending_count = count; group_comm = comm; return 0; }
int ncclRecv(uint64_t r, size_t count, int dtype, int peer, void *comm, void *stream) {
  READY(comm); if (!in_group || peer != 0 || !ok(comm, dtype)) return 5; pending_recv = r; group_comm = comm; return 0; }
int ncclGroupEnd(void) {
  in_group = 0; if (pending_send && pending_recv) memcpy((void *)pending_recv, (void *)pending_send, pending_count * 4);
  return group_comm ? started(group_comm) : 0; }
int ncclCommGetAsyncError(void *comm, int *e) {
  comm_t *c = comm; polls_seen++;
  if (c->polls > 0) { c->polls--; *e = 7; return 0; }
  if (now_ms() < c->ready_at) { *e = 7; return 0; }
  *e = async_error ? async_error : c->result; return 0; }
int ncclCommAbort(void *comm) { aborts++; free(comm); return 0; }
int ncclCommDestroy(void *comm) { READY(comm); free(comm); return 0; }
const char *ncclGetErrorString(int r) {
  return r == 4 ? "invalid argument (stub)" : r == 6 ? "remote process exited or there was a network error (stub)" : r == 2 ? "unhandled system error (stub)" : "stub"; }
`;

/** The driver's cuStreamQuery, all the communicator asks of libcuda.so.1: "done", or "not ready" when told. */
const DRIVER_STUB = `
static int stream_state = 0;
void stubSetStreamState(int s) { stream_state = s; }
int cuStreamQuery(void *stream) { return stream_state; }
`;

let stubDir: string | null = null;
let noCompiler: string | false = false;
try {
  stubDir = mkdtempSync(join(tmpdir(), 'distill-nccl-stub-'));
  writeFileSync(join(stubDir, 'stub.c'), STUB);
  execFileSync('cc', ['-shared', '-fPIC', '-o', join(stubDir, 'libnccl.so.2'), join(stubDir, 'stub.c')], { stdio: 'pipe' });
  writeFileSync(join(stubDir, 'driver.c'), DRIVER_STUB);
  execFileSync('cc', ['-shared', '-fPIC', '-o', join(stubDir, 'libcuda.so.1'), join(stubDir, 'driver.c')], { stdio: 'pipe' });
} catch (e) {
  noCompiler = `no C compiler to build the stub: ${(e as Error).message.split('\n')[0]}`;
}

test(
  'without libnccl.so.2 anywhere, loading NCCL is a BackendError naming it and how to install it',
  { skip: findLibrary(CUDA_LIBRARIES.nccl) ? 'this machine has NCCL' : false },
  async () => {
    const { loadNccl } = await import('../../src/parallel/nccl/ncclLibrary.ts');
    assert.throws(
      () => loadNccl(),
      (e: unknown) =>
        e instanceof BackendError &&
        /libnccl\.so\.2 \(NCCL\) is missing/.test(e.message) &&
        /pip install nvidia-nccl-cu12/.test(e.message) &&
        /DISTILL_CUDA_LIBS/.test(e.message),
    );
  },
);

/** The stub's own controls and counters (the same library the bindings opened: one dlopen handle). */
function stubControls() {
  const lib = koffi().load(join(stubDir!, 'libnccl.so.2'));
  return {
    setAsyncError: lib.func('void stubSetAsyncError(int e)'),
    setOpPolls: lib.func('void stubSetOpPolls(int n)'),
    setInit: lib.func('void stubSetInit(int ms, int result)'),
    polls: lib.func('int stubPolls(void)') as () => number,
    aborts: lib.func('int stubAborts(void)') as () => number,
    earlyCalls: lib.func('int stubEarlyCalls(void)') as () => number,
    configSize: lib.func('int stubConfigSize(void)') as () => number,
  };
}
const INT_MAX = 2147483647;

test(
  'the bindings against a stub libnccl.so.2: version, unique id by value, the ncclConfig_t layout, a non-blocking join, results and errors',
  { skip: noCompiler },
  async () => {
    process.env.DISTILL_CUDA_LIBS = stubDir!;
    const { loadNccl, ncclUniqueId, ncclVersionString, NcclError } = await import('../../src/parallel/nccl/ncclLibrary.ts');
    const { NcclCommunicator } = await import('../../src/parallel/nccl/ncclCommunicator.ts');
    const nccl = loadNccl();
    const stub = stubControls();
    assert.equal(ncclVersionString(nccl.version), '2.28.5');
    const id = ncclUniqueId();
    assert.deepEqual(
      Array.from(id),
      Array.from({ length: 128 }, (_, i) => (i * 3) & 255),
    );
    // koffi's ncclConfig_t is the C compiler's (the stub refuses any field out of place: size, magic, version 2.28,
    // blocking 0, every other field NCCL's "undefined").
    assert.equal(stub.configSize(), 80);
    assert.equal(nccl.config({ blocking: 0 }).size, 80);

    // The join answers ncclInProgress at once; NCCL's thread (here: 150 ms) joins while the event loop keeps turning.
    const backend = { driver: { stream: null } } as unknown as CudaBackend;
    stub.setInit(150, 0);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    const polls = stub.polls();
    const t0 = performance.now();
    const comm = await NcclCommunicator.join(id, 1, 0, 'stub', { backend, timeoutMs: 10_000 });
    clearInterval(timer);
    assert.ok(performance.now() - t0 >= 145, 'the join waited for NCCL to finish it');
    assert.ok(ticks >= 5, `the event loop ran while the join waited (${ticks} ticks in 150 ms)`);
    assert.ok(stub.polls() - polls >= 5, `ncclCommGetAsyncError polled ${stub.polls() - polls} times`);
    assert.equal(comm.describe, 'NCCL 2.28.5');

    // Host memory stands in for device memory: the stub copies, so the pointers and count reach it intact.
    const k = koffi();
    const handle = (comm as unknown as { comm: unknown }).comm;
    const src = Buffer.from(new Float32Array([1.5, -2, 3]).buffer);
    const dst = Buffer.alloc(12);
    nccl.check('ncclAllReduce', nccl.fn.ncclAllReduce(k.address(src), k.address(dst), 3, 7, 0, handle, null));
    assert.deepEqual(Array.from(new Float32Array(dst.buffer, dst.byteOffset, 3)), [1.5, -2, 3]);
    assert.throws(
      () => nccl.check('ncclAllReduce', nccl.fn.ncclAllReduce(k.address(src), k.address(dst), 3, 7, 1, handle, null)),
      (e: unknown) => e instanceof NcclError && e.result === 4 && /ncclAllReduce failed: ncclInvalidArgument \(invalid argument \(stub\)\)/.test(e.message),
    );
    comm.destroy();

    // A wrong id fails the join at once with NCCL's result, named with the group and rank.
    await assert.rejects(
      NcclCommunicator.join(new Uint8Array(128), 1, 0, 'bad', { backend }),
      /ncclCommInitRankConfig\(group bad, rank 0 of 1\) failed: ncclInvalidArgument .*DISTILL_COLLECTIVES=ring/,
    );
    await assert.rejects(NcclCommunicator.join(new Uint8Array(12), 1, 0, 'short', { backend }), /an ncclUniqueId has 128 bytes, got 12/);

    // A join that NCCL's thread ends with an error: the communicator is aborted (freed) and the error names the group.
    let aborts = stub.aborts();
    stub.setInit(20, 2);
    await assert.rejects(
      NcclCommunicator.join(id, 1, 0, 'failing', { backend }),
      (e: unknown) =>
        e instanceof CollectiveError &&
        /group failing, rank 0 of 1: NCCL reported an asynchronous error during ncclCommInitRankConfig\(group failing, rank 0 of 1\): .*ncclSystemError/.test(
          e.message,
        ),
    );
    assert.equal(stub.aborts(), aborts + 1, 'the failed communicator was aborted');

    // A rank that never joins: the wait ends within its bound, aborts the half-made communicator and says so.
    aborts = stub.aborts();
    stub.setInit(INT_MAX, 0);
    const t1 = performance.now();
    await assert.rejects(
      NcclCommunicator.join(id, 2, 1, 'absent', { backend, timeoutMs: 100 }),
      (e: unknown) =>
        e instanceof CollectiveError &&
        /group absent, rank 1 of 2: ncclCommInitRankConfig\(group absent, rank 1 of 2\) did not finish within 0\.1 s \(DISTILL_COLLECTIVE_TIMEOUT_S\): not every rank of the group joined/.test(
          e.message,
        ),
    );
    const waited = performance.now() - t1;
    assert.ok(waited >= 95 && waited < 1000, `gave up after ${waited} ms`);
    assert.equal(stub.aborts(), aborts + 1, 'the unfinished join was aborted');
    stub.setInit(0, 0);
  },
);

/** The cpu backend seen as the communicator sees a cuda backend: outputs it can write, their addresses, a stream. */
function hostBackend(): CudaBackend {
  const cpu = tf.backend();
  const storage = (cpu as unknown as { data: { get(id: tf.DataId): { values: ArrayBufferView } } }).data;
  const k = koffi();
  const extra: Record<string, unknown> = {
    makeOutput: (shape: number[], dtype: 'float32' | 'int32') => {
      const size = shape.reduce((a, b) => a * b, 1);
      return (cpu as unknown as { makeTensorInfo(s: number[], d: string, v: ArrayBufferView): tf.TensorInfo }).makeTensorInfo(
        shape,
        dtype,
        dtype === 'int32' ? new Int32Array(size) : new Float32Array(size),
      );
    },
    tensorData: (t: tf.TensorInfo) => ({ ptr: k.address(storage.get(t.dataId).values) }),
    driver: {
      stream: null,
      check: (call: string, code: number) => {
        throw new Error(`${call}: CUresult ${code}`);
      },
      // One stream in effect: the host runs every copy at once, so there is nothing to order.
      createStream: () => null,
      destroyStream: () => {},
      createEvent: () => null,
      destroyEvent: () => {},
      record: () => {},
      waitEvent: () => {},
    },
  };
  return new Proxy(cpu, {
    get: (target, prop) => (typeof prop === 'string' && prop in extra ? extra[prop] : Reflect.get(target, prop, target)),
  }) as unknown as CudaBackend;
}

// Big enough (over 64 bytes) that V8 keeps the values off its moving heap while a call holds their address.
const ramp = (n: number, scale = 1): number[] => Array.from({ length: n }, (_, i) => (i - 7) * scale);

/** Every collective once on a one-rank communicator over host memory: each result is its input, in its shape and dtype. */
async function everyCollective(comm: Communicator): Promise<void> {
  const x = tf.tensor2d(ramp(32, 0.5), [8, 4]);
  const n = tf.tensor1d(ramp(24), 'int32');
  const sum = await comm.allReduceSum(x);
  const sumInt = await comm.allReduceSum(n);
  const gathered = await comm.allGather(x);
  const scattered = await comm.reduceScatter(x);
  const [self] = await comm.exchange([{ peer: 0, tensor: x }], [{ peer: 0, shape: [4, 8] }]);
  await comm.synchronize(1000);
  for (const [t, shape] of [
    [sum, [8, 4]],
    [gathered, [8, 4]],
    [scattered, [8, 4]],
    [self, [4, 8]],
  ] as const) {
    assert.deepEqual(t.shape, shape);
    assert.equal(t.dtype, 'float32');
    assert.deepEqual(Array.from(t.dataSync()), ramp(32, 0.5));
  }
  assert.equal(sumInt.dtype, 'int32');
  assert.deepEqual(Array.from(sumInt.dataSync()), ramp(24));
  tf.dispose([x, n, sum, sumInt, gathered, scattered, self]);
}

test(
  "the NCCL communicator on host memory: every collective's shape and values, the bucketed all-reduce, errors and the bound",
  { skip: noCompiler },
  async () => {
    await tf.setBackend('cpu');
    process.env.DISTILL_CUDA_LIBS = stubDir!;
    const { ncclUniqueId } = await import('../../src/parallel/nccl/ncclLibrary.ts');
    const { NcclCommunicator } = await import('../../src/parallel/nccl/ncclCommunicator.ts');
    const { setAsyncError, setInit } = stubControls();
    setInit(0, 0);
    const setStreamState = koffi().load(join(stubDir!, 'libcuda.so.1')).func('void stubSetStreamState(int s)');
    const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'host', { backend: hostBackend() });

    const early = stubControls().earlyCalls();
    await everyCollective(comm);
    // Non-blocking NCCL: each collective, and the send/receive group's end, answers ncclInProgress for 3 polls; the
    // communicator waits each out, so NCCL never sees a call before the state is ncclSuccess again.
    const polls = stubControls().polls();
    stubControls().setOpPolls(3);
    await everyCollective(comm);
    assert.ok(stubControls().polls() - polls >= 5 * 4, `${stubControls().polls() - polls} polls for 5 calls in progress`);
    assert.equal(stubControls().earlyCalls(), early, 'a call reached NCCL while the previous one was in progress');

    // The buckets of a model's gradients through it: every gradient back in its shape and place, the flag summed.
    const grads = new Map<string, tf.Tensor>([
      ['embed', tf.tensor2d(ramp(40), [10, 4])],
      ['layer.0', tf.tensor2d(ramp(36, 2), [6, 6])],
      ['norm', tf.tensor1d(ramp(20, 3))],
    ]);
    const before = new Map([...grads].map(([name, t]) => [name, Array.from(t.dataSync())]));
    const plan = planGradientBuckets(
      [...grads].map(([name, t]) => ({ name, size: t.size })),
      60 * 4,
    );
    assert.equal(plan.length, 2);
    assert.deepEqual(await allReduceGradientBuckets(grads, comm, plan, [1, 0]), [1, 0]);
    assert.deepEqual([...grads.keys()], ['embed', 'layer.0', 'norm']);
    for (const [name, t] of grads) assert.deepEqual(Array.from(t.dataSync()), before.get(name), name);
    tf.dispose([...grads.values()]);

    // Started from synchronous code (a gradient hook), back to back, while every call answers ncclInProgress: a start
    // that finds NCCL busy is queued and goes out once the state is ncclSuccess again, never earlier.
    // Inside a tidy, as the backward pass's hooks start them: the sums outlive it.
    const xs = [1, 2, 3].map((k) => tf.tensor1d(ramp(20, k)));
    let started: PendingCollective[] = [];
    tf.tidy(() => {
      started = xs.map((x) => comm.startAllReduceSum(x));
    });
    const sums: tf.Tensor[] = [];
    for (const p of started) sums.push(await p.result());
    sums.forEach((t, i) => assert.deepEqual(Array.from(t.dataSync()), ramp(20, i + 1), `started sum ${i}`));
    assert.equal(stubControls().earlyCalls(), early, 'a started collective reached NCCL while the previous one was in progress');
    tf.dispose([...xs, ...sums]);

    // A launch that never finishes (a peer that never meets the collective, with NCCL connecting at run time):
    // the call's wait ends within DISTILL_COLLECTIVE_TIMEOUT_S, naming the call, and aborts the communicator.
    const stuck = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'stuck', { backend: hostBackend() });
    stubControls().setOpPolls(INT_MAX);
    process.env.DISTILL_COLLECTIVE_TIMEOUT_S = '0.1';
    const z = tf.ones([20]);
    try {
      await assert.rejects(
        stuck.allReduceSum(z),
        (e: unknown) =>
          e instanceof CollectiveError &&
          /group stuck, rank 0 of 1: ncclAllReduce on group stuck \(rank 0 of 1\) did not finish within 0\.1 s .*a peer rank hung or died/.test(e.message),
      );
    } finally {
      delete process.env.DISTILL_COLLECTIVE_TIMEOUT_S;
      stubControls().setOpPolls(0);
    }
    await assert.rejects(stuck.allReduceSum(z), /the communicator was aborted/);
    z.dispose();

    // A stream that never finishes: synchronize gives up after its bound, with the event loop running meanwhile.
    setStreamState(600);
    const t0 = performance.now();
    await assert.rejects(
      comm.synchronize(120),
      (e: unknown) =>
        e instanceof CollectiveError && /group host, rank 0 of 1: the collectives did not finish within 0\.1 s .*a peer rank hung or died/.test(e.message),
    );
    const waited = performance.now() - t0;
    assert.ok(waited >= 110 && waited < 1000, `gave up after ${waited} ms`);
    await assert.rejects(comm.allReduceSum(tf.ones([20])), /the communicator was aborted/);
    // With the group's probes wired (bootstrap.ts), the error names the rank behind it.
    const probed = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'probed', { backend: hostBackend() });
    probed.diagnoseHang = async (issued) => ({
      text: `rank 1 (worker 3) has issued ${issued - 1} collectives of the group, this rank ${issued}: it has not reached this one`,
      ranks: [1],
    });
    const y = await probed.allReduceSum(tf.ones([20]));
    await assert.rejects(
      probed.synchronize(50),
      (e: unknown) =>
        e instanceof CollectiveError &&
        e.ranks[0] === 1 &&
        /within 0\.1 s \(DISTILL_COLLECTIVE_TIMEOUT_S\): rank 1 \(worker 3\) has issued 0 collectives of the group, this rank 1/.test(e.message),
    );
    y.dispose();
    setStreamState(0);

    // NCCL's asynchronous error (a peer died): the next synchronize aborts the communicator and says so.
    const again = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'again', { backend: hostBackend() });
    setAsyncError(6);
    await assert.rejects(
      again.synchronize(1000),
      /group again, rank 0 of 1: NCCL reported an asynchronous error during the collectives: .*ncclRemoteError \(remote process exited/,
    );
    setAsyncError(0);
    await assert.rejects(again.allGather(tf.ones([20])), /aborted/);
  },
);
