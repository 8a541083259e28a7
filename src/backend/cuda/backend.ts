/**
 * `cuda`: a tfjs KernelBackend over the CUDA driver, cuBLAS and NVRTC, reached from Node through koffi. Tensors
 * live in device memory from the caching allocator; every kernel runs on one stream; reads copy back synchronously
 * (a CUDA copy may block the thread, unlike webgpu's). Kernels are registered per tfjs kernel name in kernels/, each
 * a CUDA C source compiled by NVRTC on first use (and cached on disk) or a cuBLAS call.
 *
 * Storage: float32 as float, int32 as int, and bool as int (0/1) too, so that every kernel indexes 4-byte elements;
 * a bool tensor reads back as tfjs's Uint8Array.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BackendError } from '../../errors.ts';
import { CachingAllocator } from './allocator.ts';
import { CudaDriver, FUNC_ATTR_MAX_DYNAMIC_SHARED, type Handle } from './driver.ts';
import { compileCached } from './nvrtc.ts';
import { koffi } from './libraries.ts';
import { Cublas } from './cublas.ts';
import { KernelProfile, PROFILE_SPIN_NS, spinSource } from './kernelProfile.ts';

export interface CudaTensorData {
  ptr: bigint;
  /** The allocator's size class of the block, to give it back. */
  blockSize: number;
  size: number;
  dtype: tf.DataType;
  refCount: number;
}

/** A kernel argument as cuLaunchKernel takes it: the bytes of the value. */
export type KernelArg = Buffer;

/*
 * Argument bytes come from Node's shared pool (allocUnsafe), every byte then written. A Buffer of its own
 * (Buffer.alloc) this small lives on V8's heap, and koffi must move it off the heap to pass its address: measured
 * here, four such arguments cost 4.2 us a call against 0.6 us from the pool, and a step makes thousands of launches.
 */
export const arg = {
  ptr(p: bigint): KernelArg {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64LE(p);
    return b;
  },
  i32(v: number): KernelArg {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32LE(v | 0);
    return b;
  },
  f32(v: number): KernelArg {
    const b = Buffer.allocUnsafe(4);
    b.writeFloatLE(v);
    return b;
  },
  i64(v: number): KernelArg {
    const b = Buffer.allocUnsafe(8);
    b.writeBigInt64LE(BigInt(v));
    return b;
  },
  /** A struct of int32 fields passed by value (its C declaration must be the same ints in the same order). */
  ints(values: ArrayLike<number>): KernelArg {
    const b = Buffer.allocUnsafe(4 * values.length);
    for (let i = 0; i < values.length; i++) b.writeInt32LE(values[i] | 0, 4 * i);
    return b;
  },
};

export interface LaunchSpec {
  /** The kernel's extern "C" name; also the key of its compiled module. */
  name: string;
  /** Its CUDA C source, made only when the kernel is first compiled. */
  source: () => string;
  grid: [number, number, number] | number;
  block: [number, number, number] | number;
  args: KernelArg[];
  sharedBytes?: number;
}

let nextDataId = 0;

/** Reads up to this many bytes go through page-locked memory without blocking the event loop (see read). */
const ASYNC_READ_LIMIT = 1 << 20;

export class CudaBackend extends tf.KernelBackend {
  readonly driver: CudaDriver;
  readonly allocator: CachingAllocator;
  private readonly data: tf.DataStorage<CudaTensorData>;
  private readonly functions = new Map<string, Handle>();
  private readonly sharedOptIn = new Map<string, number>();
  /** Kernel launches since start, for the profile and for tests that count them. */
  launches = 0;
  /** Device time per kernel while profiling (DISTILL_CUDA_PROFILE=1 or startKernelProfile); null otherwise. */
  profile: KernelProfile | null = null;

  constructor(ordinal = 0) {
    super();
    this.driver = new CudaDriver(ordinal);
    this.allocator = new CachingAllocator(this.driver);
    this.data = new tf.DataStorage(this, tf.engine());
    if (process.env.DISTILL_CUDA_PROFILE === '1') this.startKernelProfile();
  }

  startKernelProfile(): KernelProfile {
    return (this.profile ??= new KernelProfile(this.driver, () =>
      this.driver.launch(this.function('profile_spin', spinSource), [1, 1, 1], [32, 1, 1], 0, [arg.i64(PROFILE_SPIN_NS)], 'profile_spin'),
    ));
  }

  /** Runs a launch (a kernel or a library call), timed when profiling. */
  timed(name: string, launch: () => void): void {
    if (this.profile) this.profile.time(name, launch);
    else launch();
  }

  private blasHandle: Cublas | null = null;

  /** cuBLAS on this backend's stream, opened on the first product. */
  get blas(): Cublas {
    if (!this.blasHandle) {
      // PyTorch gives cuBLAS 32 MiB on Hopper (4 MiB before); DISTILL_CUDA_BLAS_WORKSPACE_MB sets it (0: cuBLAS's own default).
      const mb = Number(process.env.DISTILL_CUDA_BLAS_WORKSPACE_MB ?? (this.driver.device.computeCapability >= 90 ? 32 : 4));
      const bytes = Number.isFinite(mb) && mb > 0 ? Math.round(mb * 2 ** 20) : 0;
      const workspace = bytes > 0 ? { ptr: this.allocator.allocate(bytes).ptr, bytes } : undefined;
      this.blasHandle = new Cublas(this.driver.stream, workspace);
    }
    return this.blasHandle;
  }

  get deviceName(): string {
    return this.driver.device.name;
  }

  // ---- storage ----

  private allocate(size: number, dtype: tf.DataType): CudaTensorData {
    if (dtype === 'string' || dtype === 'complex64') throw new BackendError(`the cuda backend holds float32, int32 and bool tensors, not ${dtype}`);
    const { ptr, size: blockSize } = this.allocator.allocate(size * 4);
    return { ptr, blockSize, size, dtype, refCount: 1 };
  }

  private upload(d: CudaTensorData, values: tf.backend_util.BackendValues | null): void {
    if (!values || d.size === 0) return;
    let v: ArrayBufferView;
    if (d.dtype === 'float32') v = values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
    else v = values instanceof Int32Array ? values : Int32Array.from(values as ArrayLike<number>);
    if ((v as Float32Array).length !== d.size) throw new BackendError(`cuda write: ${(v as Float32Array).length} values for a tensor of ${d.size}`);
    this.driver.upload(d.ptr, v, d.size * 4);
  }

  override write(values: tf.backend_util.BackendValues | null, shape: number[], dtype: tf.DataType): tf.DataId {
    const dataId = { id: nextDataId++ };
    const d = this.allocate(tf.util.sizeFromShape(shape), dtype);
    this.upload(d, values);
    this.data.set(dataId, d);
    return dataId;
  }

  override move(dataId: tf.DataId, values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType, refCount: number): void {
    const d = this.allocate(tf.util.sizeFromShape(shape), dtype);
    d.refCount = refCount;
    this.upload(d, values);
    this.data.set(dataId, d);
  }

  /** A new tensor of `shape`, uninitialised (a kernel writes it); `values` upload host data instead. */
  makeOutput(shape: number[], dtype: tf.DataType, values?: tf.backend_util.BackendValues): tf.TensorInfo {
    return { dataId: this.write(values ?? null, shape, dtype), shape, dtype };
  }

  /** The device memory behind a tensor. */
  tensorData(t: tf.TensorInfo): CudaTensorData {
    return this.data.get(t.dataId);
  }

  ptr(t: tf.TensorInfo): bigint {
    return this.data.get(t.dataId).ptr;
  }

  override refCount(dataId: tf.DataId): number {
    return this.data.has(dataId) ? this.data.get(dataId).refCount : 0;
  }

  override incRef(dataId: tf.DataId): void {
    this.data.get(dataId).refCount++;
  }

  override numDataIds(): number {
    return this.data.numDataIds();
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    if (!this.data.has(dataId)) return true;
    const d = this.data.get(dataId);
    d.refCount--;
    if (!force && d.refCount > 0) return false;
    this.allocator.release(d.ptr, d.blockSize);
    this.data.delete(dataId);
    const copies = this.derived.get(dataId);
    if (copies) {
      this.derived.delete(dataId);
      for (const c of copies.values()) this.disposeData(c.dataId, true);
    }
    return true;
  }

  /** Copies made from a tensor's data (its bf16 form for products), freed with it. */
  private readonly derived = new Map<tf.DataId, Map<string, tf.TensorInfo>>();

  /**
   * `make(source)` made once per source data and `key`, and kept while the source lives: a tensor's contents never
   * change in tfjs (a variable's assign swaps in new data), so a weight used by several products in a step is
   * converted to bf16 once, not per product.
   */
  derivedFrom(source: tf.TensorInfo, key: string, make: () => tf.TensorInfo): tf.TensorInfo {
    let copies = this.derived.get(source.dataId);
    const have = copies?.get(key);
    if (have) return have;
    const made = make();
    if (!copies) this.derived.set(source.dataId, (copies = new Map()));
    copies.set(key, made);
    return made;
  }

  /** Frees an intermediate a kernel made for itself. */
  disposeIntermediate(t: tf.TensorInfo): void {
    this.disposeData(t.dataId);
  }

  /** Milliseconds from each read's start to its values (a synchronous read blocks the host that long; an asynchronous one lets it work meanwhile). */
  readWaitMs = 0;

  override readSync(dataId: tf.DataId): tf.backend_util.BackendValues {
    const t0 = performance.now();
    try {
      return this.download(dataId);
    } finally {
      this.readWaitMs += performance.now() - t0;
    }
  }

  private download(dataId: tf.DataId): tf.backend_util.BackendValues {
    const d = this.data.get(dataId);
    if (d.dtype === 'float32') {
      const out = new Float32Array(d.size);
      this.driver.download(out, d.ptr, d.size * 4);
      return out;
    }
    const out = new Int32Array(d.size);
    this.driver.download(out, d.ptr, d.size * 4);
    return d.dtype === 'bool' ? Uint8Array.from(out) : out;
  }

  /** Page-locked buffers for asynchronous reads, by size in bytes (a power of two), free ones only. */
  private readonly staging = new Map<number, Handle[]>();
  private readonly readEvents: Handle[] = [];

  /**
   * Reads without blocking the event loop: the copy is queued into page-locked memory behind the work that makes
   * the tensor, and an event after it is polled between turns of the loop. Meanwhile the host goes on issuing
   * work (the next batch's teacher forward while a step's loss is read back), so the GPU does not sit idle while
   * the host catches up after every read, as it does after a synchronous one. Large reads (checkpoints) stay
   * synchronous: the wait is theirs anyway.
   */
  override async read(dataId: tf.DataId): Promise<tf.backend_util.BackendValues> {
    const d = this.data.get(dataId);
    const bytes = d.size * 4;
    if (bytes === 0 || bytes > ASYNC_READ_LIMIT) return this.readSync(dataId);
    const t0 = performance.now();
    const size = 2 ** Math.ceil(Math.log2(Math.max(bytes, 256)));
    const pool = this.staging.get(size) ?? [];
    this.staging.set(size, pool);
    const buffer = pool.pop() ?? this.driver.allocHost(size);
    const event = this.readEvents.pop() ?? this.driver.createEvent();
    try {
      this.driver.downloadAsync(buffer, d.ptr, bytes);
      this.driver.record(event);
      while (!this.driver.isDone(event)) await new Promise((resolve) => setImmediate(resolve));
      const raw = koffi().view(buffer, bytes).slice(0);
      if (d.dtype === 'float32') return new Float32Array(raw);
      const ints = new Int32Array(raw);
      return d.dtype === 'bool' ? Uint8Array.from(ints) : ints;
    } finally {
      pool.push(buffer);
      this.readEvents.push(event);
      this.readWaitMs += performance.now() - t0;
    }
  }

  override memory(): { unreliable: boolean; reasons?: string[] } & Record<string, number | boolean | string[] | undefined> {
    const s = this.allocator.snapshot();
    return { unreliable: false, numBytesInGPU: s.inUse, numBytesInGPUAllocated: s.inUse + s.cached, numBytesInGPUFree: s.cached, peakBytesInGPU: s.peak };
  }

  override timerAvailable(): boolean {
    return true;
  }

  override async time(f: () => void): Promise<tf.BackendTimingInfo> {
    const start = this.driver.createEvent();
    const end = this.driver.createEvent();
    this.driver.record(start);
    f();
    this.driver.record(end);
    const kernelMs = this.driver.elapsed(start, end);
    this.driver.destroyEvent(start);
    this.driver.destroyEvent(end);
    return { kernelMs };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override epsilon(): number {
    return 1e-7;
  }

  override dispose(): void {
    this.driver.synchronize();
    this.allocator.releaseCached();
  }

  /**
   * Gives the allocator's cached blocks back to the driver, as torch.cuda.empty_cache(): freed tensors' memory stays
   * with this process otherwise, where another process on the same GPU (the bench's peer) cannot have it.
   */
  releaseCachedMemory(): void {
    this.allocator.releaseCached();
  }

  // ---- kernels ----

  /** The compiled function `name`, compiling its source on first use. */
  private function(name: string, source: () => string): Handle {
    let fn = this.functions.get(name);
    if (fn === undefined) {
      const compiled = compileCached(name, source(), this.driver.device.computeCapability);
      fn = this.driver.getFunction(this.driver.loadModule(compiled.image), name);
      this.functions.set(name, fn);
    }
    return fn;
  }

  launch(spec: LaunchSpec): void {
    const grid: [number, number, number] = typeof spec.grid === 'number' ? [spec.grid, 1, 1] : spec.grid;
    const block: [number, number, number] = typeof spec.block === 'number' ? [spec.block, 1, 1] : spec.block;
    if (grid[0] * grid[1] * grid[2] === 0) return;
    const fn = this.function(spec.name, spec.source);
    const shared = spec.sharedBytes ?? 0;
    // Past 48 KiB a kernel must opt in to dynamic shared memory.
    if (shared > 48 * 1024 && (this.sharedOptIn.get(spec.name) ?? 0) < shared) {
      this.driver.check('cuFuncSetAttribute', this.driver.fn.cuFuncSetAttribute(fn, FUNC_ATTR_MAX_DYNAMIC_SHARED, shared));
      this.sharedOptIn.set(spec.name, shared);
    }
    // No closure on this path unless profiling: it runs thousands of times a step.
    if (this.profile) this.profile.time(spec.name, () => this.driver.launch(fn, grid, block, shared, spec.args, spec.name), `grid ${grid.join('x')}`);
    else this.driver.launch(fn, grid, block, shared, spec.args, spec.name);
    this.launches++;
  }
}
