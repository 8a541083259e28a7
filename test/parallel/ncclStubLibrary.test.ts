/**
 * NCCL's calling conventions through koffi, checked on any machine with a C compiler: a stub libnccl.so.2 built
 * here (same prototypes as nccl.h, host memory standing in for device memory) is loaded the way the real one is
 * (DISTILL_CUDA_LIBS first), and the bindings pass the ncclUniqueId by value, fill the communicator and version
 * out-parameters, join on koffi's worker thread while the event loop runs, and turn a failing result into an
 * NcclError with NCCL's own words. The communicator itself then runs on the cpu backend, its tensors' host memory
 * standing in for device memory: every collective's shapes and values, the bucketed all-reduce, an asynchronous
 * error that aborts it, and a stream that never finishes, ended within the bound. Without NCCL anywhere, loading says libnccl.so.2 is missing and how to install it.
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
import { CollectiveError } from '../../src/parallel/nccl/communicator.ts';
import { allReduceGradientBuckets } from '../../src/parallel/nccl/bucketedAllReduce.ts';
import { planGradientBuckets } from '../../src/parallel/nccl/gradientBucketPlan.ts';

const STUB = `
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
typedef struct { char internal[128]; } ncclUniqueId;
typedef struct { int n, rank; } comm_t;
static int async_error = 0;
static uint64_t pending_send = 0, pending_recv = 0;
static size_t pending_count = 0;
void stubSetAsyncError(int e) { async_error = e; }
int ncclGetVersion(int *v) { *v = 22805; return 0; }
int ncclGetUniqueId(ncclUniqueId *id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3); return 0; }
int ncclCommInitRank(void **comm, int n, ncclUniqueId id, int rank) {
  for (int i = 0; i < 128; i++) if (id.internal[i] != (char)(i * 3)) return 4;
  usleep(150000);
  comm_t *c = malloc(sizeof *c); c->n = n; c->rank = rank; *comm = c; return 0; }
/* One rank: every collective is a copy of 4-byte elements (float32 = 7, int32 = 2); op must be sum (0). */
static int ok(void *comm, int dtype) { return ((comm_t *)comm)->n == 1 && (dtype == 7 || dtype == 2); }
int ncclAllReduce(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) {
  if (!ok(comm, dtype) || op != 0) return 4; memcpy((void *)r, (void *)s, count * 4); return 0; }
int ncclAllGather(uint64_t s, uint64_t r, size_t count, int dtype, void *comm, void *stream) {
  if (!ok(comm, dtype)) return 4; memcpy((void *)r, (void *)s, count * 4); return 0; }
int ncclReduceScatter(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) {
  if (!ok(comm, dtype) || op != 0) return 4; memcpy((void *)r, (void *)s, count * 4); return 0; }
static int in_group = 0;
int ncclGroupStart(void) { in_group = 1; pending_send = pending_recv = 0; return 0; }
int ncclSend(uint64_t s, size_t count, int dtype, int peer, void *comm, void *stream) {
  if (!in_group || peer != 0 || !ok(comm, dtype)) return 5; pending_send = s; pending_count = count; return 0; }
int ncclRecv(uint64_t r, size_t count, int dtype, int peer, void *comm, void *stream) {
  if (!in_group || peer != 0 || !ok(comm, dtype)) return 5; pending_recv = r; return 0; }
int ncclGroupEnd(void) {
  in_group = 0; if (pending_send && pending_recv) memcpy((void *)pending_recv, (void *)pending_send, pending_count * 4); return 0; }
int ncclCommGetAsyncError(void *comm, int *e) { *e = async_error; return 0; }
int ncclCommAbort(void *comm) { free(comm); return 0; }
int ncclCommDestroy(void *comm) { free(comm); return 0; }
const char *ncclGetErrorString(int r) { return r == 4 ? "invalid argument (stub)" : r == 6 ? "remote process exited or there was a network error (stub)" : "stub"; }
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

test('the bindings against a stub libnccl.so.2: version, unique id by value, join in a worker thread, results and errors', { skip: noCompiler }, async () => {
  process.env.DISTILL_CUDA_LIBS = stubDir!;
  const { loadNccl, ncclUniqueId, ncclVersionString, NcclError } = await import('../../src/parallel/nccl/ncclLibrary.ts');
  const { NcclCommunicator } = await import('../../src/parallel/nccl/ncclCommunicator.ts');
  const nccl = loadNccl();
  assert.equal(ncclVersionString(nccl.version), '2.28.5');
  const id = ncclUniqueId();
  assert.deepEqual(
    Array.from(id),
    Array.from({ length: 128 }, (_, i) => (i * 3) & 255),
  );

  const backend = { driver: { stream: null } } as unknown as CudaBackend;
  let ticks = 0;
  const timer = setInterval(() => ticks++, 10);
  const comm = await NcclCommunicator.join(id, 1, 0, 'stub', { backend, inThread: true, timeoutMs: 10_000 });
  clearInterval(timer);
  assert.ok(ticks >= 5, `the event loop ran while the join waited (${ticks} ticks in 150 ms)`);
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

  // A wrong id fails the join with NCCL's result, named with the group and rank.
  await assert.rejects(
    NcclCommunicator.join(new Uint8Array(128), 1, 0, 'bad', { backend, inThread: true }),
    /ncclCommInitRank\(group bad, rank 0 of 1\) failed: ncclInvalidArgument/,
  );
  await assert.rejects(NcclCommunicator.join(new Uint8Array(12), 1, 0, 'short', { backend }), /an ncclUniqueId has 128 bytes, got 12/);
});

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
    },
  };
  return new Proxy(cpu, {
    get: (target, prop) => (typeof prop === 'string' && prop in extra ? extra[prop] : Reflect.get(target, prop, target)),
  }) as unknown as CudaBackend;
}

// Big enough (over 64 bytes) that V8 keeps the values off its moving heap while a call holds their address.
const ramp = (n: number, scale = 1): number[] => Array.from({ length: n }, (_, i) => (i - 7) * scale);

test(
  "the NCCL communicator on host memory: every collective's shape and values, the bucketed all-reduce, errors and the bound",
  { skip: noCompiler },
  async () => {
    await tf.setBackend('cpu');
    process.env.DISTILL_CUDA_LIBS = stubDir!;
    const { ncclUniqueId } = await import('../../src/parallel/nccl/ncclLibrary.ts');
    const { NcclCommunicator } = await import('../../src/parallel/nccl/ncclCommunicator.ts');
    const stub = koffi().load(join(stubDir!, 'libnccl.so.2'));
    const setAsyncError = stub.func('void stubSetAsyncError(int e)');
    const setStreamState = koffi().load(join(stubDir!, 'libcuda.so.1')).func('void stubSetStreamState(int s)');
    const comm = await NcclCommunicator.join(ncclUniqueId(), 1, 0, 'host', { backend: hostBackend() });

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
    await assert.rejects(again.synchronize(1000), /group again, rank 0 of 1: NCCL reported an asynchronous error: .*ncclRemoteError \(remote process exited/);
    setAsyncError(0);
    await assert.rejects(again.allGather(tf.ones([20])), /aborted/);
  },
);
