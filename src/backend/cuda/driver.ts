/**
 * The CUDA driver API as far as the backend uses it, bound through koffi: one device, its primary context, one
 * compute stream, device memory, copies, modules and kernel launches, events for timing. Every call is checked; a
 * failure throws a CudaError with the driver's own name for the code (CUDA_ERROR_OUT_OF_MEMORY, ...).
 *
 * Device pointers are bigints (CUdeviceptr is 64-bit). The stream is created once and every kernel, copy and cuBLAS
 * call goes on it, so work is ordered without events and a freed block may be reused by the next kernel at once.
 * A second stream (`createStream`) is for work that must run beside the compute stream (NCCL's gradient buckets
 * during the backward pass); events order the two (`record`, `waitEvent`).
 */
import { DistillError } from '../../errors.ts';
import { openLibrary, type NativeFunction } from './libraries.ts';

export class CudaError extends DistillError {
  constructor(
    readonly call: string,
    readonly code: number,
    readonly codeName: string,
  ) {
    super(`${call} failed: ${codeName} (${code})`);
  }
}

export const CUDA_ERROR_OUT_OF_MEMORY = 2;

/** The bound driver functions. */
interface DriverFunctions {
  cuInit: NativeFunction;
  cuDriverGetVersion: NativeFunction;
  cuDeviceGetCount: NativeFunction;
  cuDeviceGet: NativeFunction;
  cuDeviceGetName: NativeFunction;
  cuDeviceGetAttribute: NativeFunction;
  cuDeviceTotalMem: NativeFunction;
  cuDevicePrimaryCtxRetain: NativeFunction;
  cuCtxSetCurrent: NativeFunction;
  cuCtxSynchronize: NativeFunction;
  cuStreamCreate: NativeFunction;
  cuStreamSynchronize: NativeFunction;
  cuStreamWaitEvent: NativeFunction;
  cuStreamDestroy: NativeFunction;
  cuMemAlloc: NativeFunction;
  cuMemFree: NativeFunction;
  cuMemGetInfo: NativeFunction;
  cuMemcpyHtoDAsync: NativeFunction;
  cuMemcpyDtoHAsync: NativeFunction;
  cuMemcpyDtoDAsync: NativeFunction;
  cuMemcpyDtoHAsyncPinned: NativeFunction;
  cuMemAllocHost: NativeFunction;
  cuMemsetD32Async: NativeFunction;
  cuModuleLoadData: NativeFunction;
  cuModuleGetFunction: NativeFunction;
  cuFuncSetAttribute: NativeFunction;
  cuLaunchKernel: NativeFunction;
  cuEventCreate: NativeFunction;
  cuEventRecord: NativeFunction;
  cuEventSynchronize: NativeFunction;
  cuEventQuery: NativeFunction;
  cuEventElapsedTime: NativeFunction;
  cuEventDestroy: NativeFunction;
  cuGetErrorName: NativeFunction;
}

function bind(): DriverFunctions {
  const lib = openLibrary('driver');
  const f = (sig: string): NativeFunction => lib.func(sig);
  return {
    cuInit: f('int cuInit(unsigned int flags)'),
    cuDriverGetVersion: f('int cuDriverGetVersion(_Out_ int *version)'),
    cuDeviceGetCount: f('int cuDeviceGetCount(_Out_ int *count)'),
    cuDeviceGet: f('int cuDeviceGet(_Out_ int *device, int ordinal)'),
    cuDeviceGetName: f('int cuDeviceGetName(_Out_ uint8_t *name, int len, int device)'),
    cuDeviceGetAttribute: f('int cuDeviceGetAttribute(_Out_ int *value, int attribute, int device)'),
    cuDeviceTotalMem: f('int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int device)'),
    cuDevicePrimaryCtxRetain: f('int cuDevicePrimaryCtxRetain(_Out_ void **ctx, int device)'),
    cuCtxSetCurrent: f('int cuCtxSetCurrent(void *ctx)'),
    cuCtxSynchronize: f('int cuCtxSynchronize()'),
    cuStreamCreate: f('int cuStreamCreate(_Out_ void **stream, unsigned int flags)'),
    cuStreamSynchronize: f('int cuStreamSynchronize(void *stream)'),
    cuStreamWaitEvent: f('int cuStreamWaitEvent(void *stream, void *event, unsigned int flags)'),
    cuStreamDestroy: f('int cuStreamDestroy_v2(void *stream)'),
    cuMemAlloc: f('int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)'),
    cuMemFree: f('int cuMemFree_v2(uint64_t dptr)'),
    cuMemGetInfo: f('int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)'),
    cuMemcpyHtoDAsync: f('int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream)'),
    cuMemcpyDtoHAsync: f('int cuMemcpyDtoHAsync_v2(_Out_ void *dst, uint64_t src, size_t bytes, void *stream)'),
    cuMemcpyDtoDAsync: f('int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream)'),
    // The same copy into page-locked host memory that the driver owns: truly asynchronous, unlike a copy into a JS buffer.
    cuMemcpyDtoHAsyncPinned: f('int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream)'),
    cuMemAllocHost: f('int cuMemAllocHost_v2(_Out_ void **pp, size_t bytes)'),
    cuMemsetD32Async: f('int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void *stream)'),
    cuModuleLoadData: f('int cuModuleLoadData(_Out_ void **module, const void *image)'),
    cuModuleGetFunction: f('int cuModuleGetFunction(_Out_ void **fn, void *module, const char *name)'),
    cuFuncSetAttribute: f('int cuFuncSetAttribute(void *fn, int attribute, int value)'),
    cuLaunchKernel: f(
      'int cuLaunchKernel(void *fn, uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by, uint32_t bz, uint32_t sharedBytes, void *stream, void **params, void **extra)',
    ),
    cuEventCreate: f('int cuEventCreate(_Out_ void **event, unsigned int flags)'),
    cuEventRecord: f('int cuEventRecord(void *event, void *stream)'),
    cuEventSynchronize: f('int cuEventSynchronize(void *event)'),
    cuEventQuery: f('int cuEventQuery(void *event)'),
    cuEventElapsedTime: f('int cuEventElapsedTime(_Out_ float *ms, void *start, void *end)'),
    cuEventDestroy: f('int cuEventDestroy_v2(void *event)'),
    cuGetErrorName: f('int cuGetErrorName(int error, _Out_ const char **name)'),
  };
}

/** Opaque driver handles (CUcontext, CUstream, CUmodule, CUfunction, CUevent) as koffi passes them. */
export type Handle = unknown;

// CUdevice_attribute values (cuda.h).
const ATTR_COMPUTE_MAJOR = 75;
const ATTR_COMPUTE_MINOR = 76;
const ATTR_MULTIPROCESSORS = 16;
/** CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
export const FUNC_ATTR_MAX_DYNAMIC_SHARED = 8;
const STREAM_NON_BLOCKING = 1;
const EVENT_DISABLE_TIMING = 2;

export interface DeviceInfo {
  ordinal: number;
  name: string;
  /** Compute capability, e.g. 90 for Hopper. */
  computeCapability: number;
  multiprocessors: number;
  totalBytes: number;
  driverVersion: number;
}

/** One device's context and stream: everything the backend launches goes through here. */
export class CudaDriver {
  readonly fn: DriverFunctions;
  readonly device: DeviceInfo;
  readonly stream: Handle;
  private readonly ctx: Handle;

  constructor(ordinal = 0) {
    this.fn = bind();
    this.check('cuInit', this.fn.cuInit(0));
    const count = [0];
    this.check('cuDeviceGetCount', this.fn.cuDeviceGetCount(count));
    if (count[0] < 1) throw new CudaError('cuDeviceGetCount', 100, 'no CUDA device is visible (CUDA_VISIBLE_DEVICES?)');
    if (ordinal >= count[0]) throw new CudaError('cuDeviceGet', 101, `device ${ordinal} asked for, ${count[0]} visible`);
    const dev = [0];
    this.check('cuDeviceGet', this.fn.cuDeviceGet(dev, ordinal));
    const nameBuf = Buffer.alloc(256);
    this.check('cuDeviceGetName', this.fn.cuDeviceGetName(nameBuf, 256, dev[0]));
    const attr = (a: number): number => {
      const v = [0];
      this.check('cuDeviceGetAttribute', this.fn.cuDeviceGetAttribute(v, a, dev[0]));
      return v[0];
    };
    const total = [0];
    this.check('cuDeviceTotalMem', this.fn.cuDeviceTotalMem(total, dev[0]));
    const version = [0];
    this.check('cuDriverGetVersion', this.fn.cuDriverGetVersion(version));
    this.device = {
      ordinal,
      name: nameBuf.toString('utf8', 0, nameBuf.indexOf(0)),
      computeCapability: attr(ATTR_COMPUTE_MAJOR) * 10 + attr(ATTR_COMPUTE_MINOR),
      multiprocessors: attr(ATTR_MULTIPROCESSORS),
      totalBytes: Number(total[0]),
      driverVersion: version[0],
    };
    const ctx: Handle[] = [null];
    this.check('cuDevicePrimaryCtxRetain', this.fn.cuDevicePrimaryCtxRetain(ctx, dev[0]));
    this.ctx = ctx[0];
    this.check('cuCtxSetCurrent', this.fn.cuCtxSetCurrent(this.ctx));
    const stream: Handle[] = [null];
    this.check('cuStreamCreate', this.fn.cuStreamCreate(stream, STREAM_NON_BLOCKING));
    this.stream = stream[0];
  }

  check(call: string, code: unknown): void {
    if (code === 0) return;
    const c = Number(code);
    const name: (string | null)[] = [null];
    const known = this.fn.cuGetErrorName(c, name) === 0 && name[0] ? name[0] : `CUresult ${c}`;
    throw new CudaError(call, c, known);
  }

  /** Device memory, or null when the device is out of it (the allocator then frees its cache and retries). */
  tryAlloc(bytes: number): bigint | null {
    const p: (number | bigint)[] = [0];
    const code = Number(this.fn.cuMemAlloc(p, bytes));
    if (code === CUDA_ERROR_OUT_OF_MEMORY) return null;
    this.check(`cuMemAlloc(${bytes} bytes)`, code);
    return BigInt(p[0]);
  }

  free(ptr: bigint): void {
    this.check('cuMemFree', this.fn.cuMemFree(ptr));
  }

  memInfo(): { free: number; total: number } {
    const f = [0];
    const t = [0];
    this.check('cuMemGetInfo', this.fn.cuMemGetInfo(f, t));
    return { free: Number(f[0]), total: Number(t[0]) };
  }

  upload(dst: bigint, src: ArrayBufferView, bytes = src.byteLength): void {
    if (bytes === 0) return;
    this.check('cuMemcpyHtoDAsync', this.fn.cuMemcpyHtoDAsync(dst, src, bytes, this.stream));
  }

  /** Copies device memory into `dst` and waits for it (and everything queued before it). */
  download(dst: ArrayBufferView, src: bigint, bytes = dst.byteLength): void {
    if (bytes > 0) this.check('cuMemcpyDtoHAsync', this.fn.cuMemcpyDtoHAsync(dst, src, bytes, this.stream));
    this.synchronize();
  }

  /** Page-locked host memory of `bytes` (for copies the host does not wait on), kept for the process's life. */
  allocHost(bytes: number): Handle {
    const p: Handle[] = [null];
    this.check('cuMemAllocHost', this.fn.cuMemAllocHost(p, bytes));
    return p[0];
  }

  /** Queues a copy of device memory into page-locked `dst` (allocHost) without waiting for it. */
  downloadAsync(dst: Handle, src: bigint, bytes: number): void {
    if (bytes > 0) this.check('cuMemcpyDtoHAsync', this.fn.cuMemcpyDtoHAsyncPinned(dst, src, bytes, this.stream));
  }

  /** Whether the work before `event` is done (cuEventQuery: 0 done, 600 not yet). */
  isDone(event: Handle): boolean {
    const code = this.fn.cuEventQuery(event);
    if (code === 600) return false;
    this.check('cuEventQuery', code);
    return true;
  }

  copy(dst: bigint, src: bigint, bytes: number): void {
    if (bytes > 0) this.check('cuMemcpyDtoDAsync', this.fn.cuMemcpyDtoDAsync(dst, src, bytes, this.stream));
  }

  fill32(dst: bigint, word: number, count: number): void {
    if (count > 0) this.check('cuMemsetD32Async', this.fn.cuMemsetD32Async(dst, word >>> 0, count, this.stream));
  }

  synchronize(): void {
    this.check('cuStreamSynchronize', this.fn.cuStreamSynchronize(this.stream));
  }

  loadModule(image: Uint8Array): Handle {
    const mod: Handle[] = [null];
    this.check('cuModuleLoadData', this.fn.cuModuleLoadData(mod, image));
    return mod[0];
  }

  getFunction(module: Handle, name: string): Handle {
    const fn: Handle[] = [null];
    this.check(`cuModuleGetFunction(${name})`, this.fn.cuModuleGetFunction(fn, module, name));
    return fn[0];
  }

  launch(fn: Handle, grid: [number, number, number], block: [number, number, number], sharedBytes: number, params: Buffer[], name: string): void {
    const code = this.fn.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, this.stream, params, null);
    if (code !== 0) this.check(`cuLaunchKernel(${name}, grid [${grid}], block [${block}])`, code);
  }

  /** An event; `timing` false (CU_EVENT_DISABLE_TIMING) for one that only orders streams, which is cheaper to record and wait on. */
  createEvent(timing = true): Handle {
    const e: Handle[] = [null];
    this.check('cuEventCreate', this.fn.cuEventCreate(e, timing ? 0 : EVENT_DISABLE_TIMING));
    return e[0];
  }

  /** Records `event` after the work enqueued so far on `stream` (the compute stream by default). */
  record(event: Handle, stream: Handle = this.stream): void {
    this.check('cuEventRecord', this.fn.cuEventRecord(event, stream));
  }

  /** Makes `stream`'s later work wait for `event`'s last record (the host does not wait). */
  waitEvent(stream: Handle, event: Handle): void {
    this.check('cuStreamWaitEvent', this.fn.cuStreamWaitEvent(stream, event, 0));
  }

  /** A second, non-blocking stream of this context. */
  createStream(): Handle {
    const stream: Handle[] = [null];
    this.check('cuStreamCreate', this.fn.cuStreamCreate(stream, STREAM_NON_BLOCKING));
    return stream[0];
  }

  destroyStream(stream: Handle): void {
    this.check('cuStreamDestroy', this.fn.cuStreamDestroy(stream));
  }

  /** Milliseconds between two recorded events, after waiting for the second. */
  elapsed(start: Handle, end: Handle): number {
    this.check('cuEventSynchronize', this.fn.cuEventSynchronize(end));
    const ms = [0];
    this.check('cuEventElapsedTime', this.fn.cuEventElapsedTime(ms, start, end));
    return ms[0];
  }

  destroyEvent(event: Handle): void {
    this.check('cuEventDestroy', this.fn.cuEventDestroy(event));
  }
}
