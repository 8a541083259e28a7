/**
 * NCCL's calling conventions through koffi, checked on any machine with a C compiler: a stub libnccl.so.2 built
 * here (same prototypes as nccl.h, host memory standing in for device memory) is loaded the way the real one is
 * (DISTILL_CUDA_LIBS first), and the bindings pass the ncclUniqueId by value, fill the communicator and version
 * out-parameters, join on koffi's worker thread while the event loop runs, and turn a failing result into an
 * NcclError with NCCL's own words. Without NCCL anywhere, loading says libnccl.so.2 is missing and how to install it.
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

const STUB = `
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
typedef struct { char internal[128]; } ncclUniqueId;
typedef struct { int n, rank; } comm_t;
int ncclGetVersion(int *v) { *v = 22805; return 0; }
int ncclGetUniqueId(ncclUniqueId *id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3); return 0; }
int ncclCommInitRank(void **comm, int n, ncclUniqueId id, int rank) {
  for (int i = 0; i < 128; i++) if (id.internal[i] != (char)(i * 3)) return 4;
  usleep(150000);
  comm_t *c = malloc(sizeof *c); c->n = n; c->rank = rank; *comm = c; return 0; }
int ncclAllReduce(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) {
  if (((comm_t *)comm)->n != 1 || dtype != 7 || op != 0) return 4; memcpy((void *)r, (void *)s, count * 4); return 0; }
int ncclAllGather(uint64_t s, uint64_t r, size_t count, int dtype, void *comm, void *stream) { return 5; }
int ncclReduceScatter(uint64_t s, uint64_t r, size_t count, int dtype, int op, void *comm, void *stream) { return 5; }
int ncclSend(uint64_t s, size_t count, int dtype, int peer, void *comm, void *stream) { return 5; }
int ncclRecv(uint64_t r, size_t count, int dtype, int peer, void *comm, void *stream) { return 5; }
int ncclGroupStart(void) { return 0; }
int ncclGroupEnd(void) { return 0; }
int ncclCommGetAsyncError(void *comm, int *e) { *e = 6; return 0; }
int ncclCommAbort(void *comm) { free(comm); return 0; }
int ncclCommDestroy(void *comm) { free(comm); return 0; }
const char *ncclGetErrorString(int r) { return r == 4 ? "invalid argument (stub)" : "stub"; }
`;

let stubDir: string | null = null;
let noCompiler: string | false = false;
try {
  stubDir = mkdtempSync(join(tmpdir(), 'distill-nccl-stub-'));
  writeFileSync(join(stubDir, 'stub.c'), STUB);
  execFileSync('cc', ['-shared', '-fPIC', '-o', join(stubDir, 'libnccl.so.2'), join(stubDir, 'stub.c')], { stdio: 'pipe' });
} catch (e) {
  noCompiler = `no C compiler to build the stub: ${(e as Error).message.split('\n')[0]}`;
}

test('without libnccl.so.2 anywhere, loading NCCL is a BackendError naming it and how to install it', { skip: findLibrary(CUDA_LIBRARIES.nccl) ? 'this machine has NCCL' : false }, async () => {
  const { loadNccl } = await import('../../src/parallel/nccl/ncclLibrary.ts');
  assert.throws(() => loadNccl(), (e: unknown) => e instanceof BackendError && /libnccl\.so\.2 \(NCCL\) is missing/.test(e.message) && /pip install nvidia-nccl-cu12/.test(e.message) && /DISTILL_CUDA_LIBS/.test(e.message));
});

test('the bindings against a stub libnccl.so.2: version, unique id by value, join in a worker thread, results and errors', { skip: noCompiler }, async () => {
  process.env.DISTILL_CUDA_LIBS = stubDir!;
  const { loadNccl, ncclUniqueId, ncclVersionString, NcclError } = await import('../../src/parallel/nccl/ncclLibrary.ts');
  const { NcclCommunicator } = await import('../../src/parallel/nccl/ncclCommunicator.ts');
  const nccl = loadNccl();
  assert.equal(ncclVersionString(nccl.version), '2.28.5');
  const id = ncclUniqueId();
  assert.deepEqual(Array.from(id), Array.from({ length: 128 }, (_, i) => (i * 3) & 255));

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
  assert.throws(() => nccl.check('ncclAllReduce', nccl.fn.ncclAllReduce(k.address(src), k.address(dst), 3, 2, 0, handle, null)),
    (e: unknown) => e instanceof NcclError && e.result === 4 && /ncclAllReduce failed: ncclInvalidArgument \(invalid argument \(stub\)\)/.test(e.message));
  const state = [0];
  nccl.check('ncclCommGetAsyncError', nccl.fn.ncclCommGetAsyncError(handle, state));
  assert.equal(state[0], 6, 'the async error reaches us through the out-parameter');
  comm.destroy();

  // A wrong id fails the join with NCCL's result, named with the group and rank.
  await assert.rejects(NcclCommunicator.join(new Uint8Array(128), 1, 0, 'bad', { backend, inThread: true }), /ncclCommInitRank\(group bad, rank 0 of 1\) failed: ncclInvalidArgument/);
  await assert.rejects(NcclCommunicator.join(new Uint8Array(12), 1, 0, 'short', { backend }), /an ncclUniqueId has 128 bytes, got 12/);
});
