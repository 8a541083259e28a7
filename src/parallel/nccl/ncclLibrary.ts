/**
 * NCCL (libnccl.so.2) bound through koffi, as far as the collectives use it. The library is found where the CUDA
 * libraries are (src/backend/cuda/libraries.ts: the toolkit, distro packages, Python's nvidia-nccl-* wheels); a
 * missing one is a BackendError naming libnccl.so.2 and how to install it.
 *
 * Calling conventions (measured with ../shared/tools/nccl-ffi-probe.cjs on NCCL 2.28): device pointers pass as
 * uint64_t, the communicator and the stream as opaque pointers, and the ncclUniqueId (128 bytes) by value as a
 * struct. Communicators are made non-blocking (ncclCommInitRankConfig with an ncclConfig_t whose `blocking` is 0): see
 * ncclCommunicator.ts for why and how their calls are waited for. NCCL reads its NCCL_* environment variables itself, so the user's settings (NCCL_SOCKET_IFNAME,
 * NCCL_NVLS_ENABLE=0, NCCL_DEBUG, ...) hold unchanged: nothing here sets or clears one.
 */
import { BackendError, DistillError } from '../../errors.ts';
import { koffi, openLibrary, type NativeFunction } from '../../backend/cuda/libraries.ts';

/** ncclResult_t */
export const NCCL_SUCCESS = 0;
export const NCCL_IN_PROGRESS = 7;
const RESULT_NAMES = [
  'ncclSuccess',
  'ncclUnhandledCudaError',
  'ncclSystemError',
  'ncclInternalError',
  'ncclInvalidArgument',
  'ncclInvalidUsage',
  'ncclRemoteError',
  'ncclInProgress',
];

/** ncclDataType_t for the dtypes the cuda backend stores (bool is stored as int32 there). */
export const NCCL_DTYPE = { float32: 7, int32: 2, bool: 2 } as const;
/** ncclRedOp_t */
export const NCCL_SUM = 0;

/** The length of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES). */
export const NCCL_UNIQUE_ID_BYTES = 128;

/** NCCL_CONFIG_UNDEF_INT (INT_MIN): "NCCL's default" for an int field of ncclConfig_t. */
const NCCL_CONFIG_UNDEF_INT = -2147483648;
/** ncclConfig_t's magic (0xcafebeef in NCCL_CONFIG_INITIALIZER); NCCL refuses a config without it. */
const NCCL_CONFIG_MAGIC = 0xcafebeef;
/**
 * The version NCCL_CONFIG_INITIALIZER writes, NCCL_VERSION(2, 28, 0): the config below is laid out as NCCL 2.28's
 * nccl.h declares it. NCCL copies min(config.size, its own sizeof) bytes and ignores the fields newer than the
 * version it is told (init.cc, parseCommConfig), and the struct only grows at its end, so 2.28's layout is read
 * right by 2.28 and by every later NCCL; an older one (2.18 at least) reads the prefix it knows.
 */
export const NCCL_CONFIG_VERSION = 22800;

/**
 * ncclConfig_t of NCCL 2.28 (struct ncclConfig_v22800), field by field in the header's order: size, magic and
 * version, then what users set. koffi lays it out as the C compiler does (pointers 8-byte aligned: 80 bytes).
 */
const NCCL_CONFIG_FIELDS = {
  size: 'size_t',
  magic: 'uint32_t',
  version: 'uint32_t',
  blocking: 'int',
  cgaClusterSize: 'int',
  minCTAs: 'int',
  maxCTAs: 'int',
  netName: 'void *',
  splitShare: 'int',
  trafficClass: 'int',
  commName: 'void *',
  collnetEnable: 'int',
  CTAPolicy: 'int',
  shrinkShare: 'int',
  nvlsCTAs: 'int',
  nChannelsPerNetPeer: 'int',
  nvlinkCentricSched: 'int',
} as const;

export type NcclConfig = Record<keyof typeof NCCL_CONFIG_FIELDS, number | null>;

/** An NCCL call that returned an error; `result` is NCCL's code, `detail` its own words for it. */
export class NcclError extends DistillError {
  constructor(
    readonly call: string,
    readonly result: number,
    detail: string,
  ) {
    super(`${call} failed: ${RESULT_NAMES[result] ?? `ncclResult ${result}`} (${detail}). Run with NCCL_DEBUG=WARN for NCCL's own account`);
  }
}

/** An opaque ncclComm_t as koffi passes it. */
export type NcclComm = unknown;

export interface NcclFunctions {
  ncclGetVersion: NativeFunction;
  ncclGetUniqueId: NativeFunction;
  ncclCommInitRankConfig: NativeFunction;
  ncclAllReduce: NativeFunction;
  ncclAllGather: NativeFunction;
  ncclReduceScatter: NativeFunction;
  ncclSend: NativeFunction;
  ncclRecv: NativeFunction;
  ncclGroupStart: NativeFunction;
  ncclGroupEnd: NativeFunction;
  ncclCommGetAsyncError: NativeFunction;
  ncclCommAbort: NativeFunction;
  ncclCommDestroy: NativeFunction;
  ncclGetErrorString: NativeFunction;
}

/** koffi's struct and array type constructors, which the shared Koffi type leaves out. */
interface KoffiTypes {
  struct(name: string, fields: Record<string, unknown>): unknown;
  array(type: string, length: number): unknown;
  sizeof(type: string): number;
}

export interface Nccl {
  fn: NcclFunctions;
  /** NCCL's version as NCCL_VERSION_CODE: 22805 for 2.28.5. */
  version: number;
  /** Throws an NcclError unless `result` is ncclSuccess. */
  check(call: string, result: unknown): void;
  /** NCCL_CONFIG_INITIALIZER with `blocking` set: what ncclCommInitRankConfig takes. */
  config(o: { blocking: 0 | 1 }): NcclConfig;
}

let loaded: Nccl | null = null;
let typesDeclared = false;

/** NCCL, opened once per process; a BackendError when libnccl.so.2 is missing or does not load. */
export function loadNccl(): Nccl {
  if (loaded) return loaded;
  const lib = openLibrary('nccl');
  const k = koffi() as unknown as KoffiTypes;
  // koffi refuses a type name twice: declared once, even when a first load failed further on.
  if (!typesDeclared) {
    k.struct('ncclUniqueId', { internal: k.array('uint8_t', NCCL_UNIQUE_ID_BYTES) });
    k.struct('ncclConfig_t', NCCL_CONFIG_FIELDS);
  }
  typesDeclared = true;
  const f = (sig: string): NativeFunction => lib.func(sig);
  let fn: NcclFunctions;
  try {
    fn = {
      ncclGetVersion: f('int ncclGetVersion(_Out_ int *version)'),
      ncclGetUniqueId: f('int ncclGetUniqueId(_Out_ ncclUniqueId *id)'),
      ncclCommInitRankConfig: f('int ncclCommInitRankConfig(_Out_ void **comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config)'),
      ncclAllReduce: f('int ncclAllReduce(uint64_t send, uint64_t recv, size_t count, int dtype, int op, void *comm, void *stream)'),
      ncclAllGather: f('int ncclAllGather(uint64_t send, uint64_t recv, size_t sendCount, int dtype, void *comm, void *stream)'),
      ncclReduceScatter: f('int ncclReduceScatter(uint64_t send, uint64_t recv, size_t recvCount, int dtype, int op, void *comm, void *stream)'),
      ncclSend: f('int ncclSend(uint64_t send, size_t count, int dtype, int peer, void *comm, void *stream)'),
      ncclRecv: f('int ncclRecv(uint64_t recv, size_t count, int dtype, int peer, void *comm, void *stream)'),
      ncclGroupStart: f('int ncclGroupStart()'),
      ncclGroupEnd: f('int ncclGroupEnd()'),
      ncclCommGetAsyncError: f('int ncclCommGetAsyncError(void *comm, _Out_ int *asyncError)'),
      ncclCommAbort: f('int ncclCommAbort(void *comm)'),
      ncclCommDestroy: f('int ncclCommDestroy(void *comm)'),
      ncclGetErrorString: f('const char *ncclGetErrorString(int result)'),
    };
  } catch (e) {
    throw new BackendError(
      `libnccl.so.2 loaded but lacks a function the collectives call (${(e as Error).message.split('\n')[0]}): install NCCL 2.18 or newer (Debian/Ubuntu \`libnccl2\`, or \`pip install nvidia-nccl-cu12\`)`,
    );
  }
  const check = (call: string, result: unknown): void => {
    const r = Number(result);
    if (r === NCCL_SUCCESS) return;
    const text = fn.ncclGetErrorString(r);
    throw new NcclError(call, r, typeof text === 'string' ? text : 'no description');
  };
  const v = [0];
  check('ncclGetVersion', fn.ncclGetVersion(v));
  const size = k.sizeof('ncclConfig_t');
  const config = (o: { blocking: 0 | 1 }): NcclConfig => {
    const c = Object.fromEntries(
      Object.entries(NCCL_CONFIG_FIELDS).map(([name, type]) => [name, type === 'void *' ? null : NCCL_CONFIG_UNDEF_INT]),
    ) as NcclConfig;
    return { ...c, size, magic: NCCL_CONFIG_MAGIC, version: NCCL_CONFIG_VERSION, blocking: o.blocking };
  };
  loaded = { fn, version: v[0], check, config };
  return loaded;
}

/** "2.28.5" from NCCL_VERSION_CODE (major·10000 + minor·100 + patch since 2.9). */
export function ncclVersionString(code: number): string {
  return `${Math.floor(code / 10000)}.${Math.floor((code % 10000) / 100)}.${code % 100}`;
}

/** A fresh ncclUniqueId from rank 0 of a group, as the bytes every rank passes to ncclCommInitRank. */
export function ncclUniqueId(nccl: Nccl = loadNccl()): Uint8Array {
  const id: { internal?: ArrayLike<number> } = {};
  nccl.check('ncclGetUniqueId', nccl.fn.ncclGetUniqueId(id));
  if (!id.internal || id.internal.length !== NCCL_UNIQUE_ID_BYTES)
    throw new NcclError('ncclGetUniqueId', 3, `returned ${id.internal?.length ?? 0} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
  return Uint8Array.from(id.internal);
}
