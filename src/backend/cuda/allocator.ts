/**
 * A caching allocator for device memory, as PyTorch's: cuMemAlloc and cuMemFree are slow and synchronise the device,
 * so freed blocks go to a pool of their size class and the next request of that class takes one back. Everything
 * runs on one stream, so a block freed by a tensor may be handed to the next kernel at once: the stream orders the
 * old readers before the new writer.
 *
 * Size classes: multiples of 512 B up to 1 MiB, then multiples of 2 MiB. When the device runs out, the pools are
 * released and the request tried once more; `memoryFraction` caps what the process holds (the
 * `--cuda_memory_fraction`-style cap, from DISTILL_CUDA_MEMORY_FRACTION).
 */
import type { CudaDriver } from './driver.ts';
import { CudaError } from './driver.ts';

const SMALL = 512;
const LARGE = 2 << 20;

export function sizeClass(bytes: number): number {
  if (bytes <= 0) return 0;
  return bytes < 1 << 20 ? Math.ceil(bytes / SMALL) * SMALL : Math.ceil(bytes / LARGE) * LARGE;
}

export interface AllocatorStats {
  /** Bytes in blocks that tensors hold. */
  inUse: number;
  /** Bytes in freed blocks kept for reuse. */
  cached: number;
  /** The most `inUse` has been since the last reset. */
  peak: number;
  /** cuMemAlloc calls so far (a steady training loop makes none after its first steps). */
  deviceAllocations: number;
}

export class CachingAllocator {
  private readonly pools = new Map<number, bigint[]>();
  private readonly stats: AllocatorStats = { inUse: 0, cached: 0, peak: 0, deviceAllocations: 0 };
  private readonly limit: number;

  constructor(
    private readonly driver: CudaDriver,
    memoryFraction = Number(process.env.DISTILL_CUDA_MEMORY_FRACTION ?? 1),
  ) {
    const fraction = memoryFraction > 0 && memoryFraction <= 1 ? memoryFraction : 1;
    this.limit = fraction * driver.device.totalBytes;
  }

  /** A block of at least `bytes`; its size class is what `release` must be given back. */
  allocate(bytes: number): { ptr: bigint; size: number } {
    const size = sizeClass(bytes);
    if (size === 0) return { ptr: 0n, size: 0 };
    const pool = this.pools.get(size);
    let ptr = pool?.pop();
    if (ptr !== undefined) {
      this.stats.cached -= size;
    } else {
      if (this.stats.inUse + this.stats.cached + size > this.limit) this.releaseCached();
      ptr = this.stats.inUse + size <= this.limit ? (this.driver.tryAlloc(size) ?? undefined) : undefined;
      if (ptr === undefined) {
        this.releaseCached();
        ptr = this.stats.inUse + size <= this.limit ? (this.driver.tryAlloc(size) ?? undefined) : undefined;
      }
      if (ptr === undefined) {
        const gib = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;
        throw new CudaError(
          `cuMemAlloc(${gib(size)})`,
          2,
          `CUDA_ERROR_OUT_OF_MEMORY: ${gib(this.stats.inUse)} held by tensors, limit ${gib(this.limit)} of ${gib(this.driver.device.totalBytes)} on ${this.driver.device.name}; lower --mbs or --seq_length, or raise DISTILL_CUDA_MEMORY_FRACTION`,
        );
      }
      this.stats.deviceAllocations++;
    }
    this.stats.inUse += size;
    this.stats.peak = Math.max(this.stats.peak, this.stats.inUse);
    return { ptr, size };
  }

  release(ptr: bigint, size: number): void {
    if (size === 0) return;
    let pool = this.pools.get(size);
    if (!pool) this.pools.set(size, (pool = []));
    pool.push(ptr);
    this.stats.inUse -= size;
    this.stats.cached += size;
  }

  /** Frees every cached block (after the stream's work that may still read them). */
  releaseCached(): void {
    if (this.stats.cached === 0) return;
    this.driver.synchronize();
    for (const [size, pool] of this.pools) {
      for (const ptr of pool) this.driver.free(ptr);
      this.stats.cached -= size * pool.length;
    }
    this.pools.clear();
  }

  snapshot(): AllocatorStats {
    return { ...this.stats };
  }

  resetPeak(): void {
    this.stats.peak = this.stats.inUse;
  }
}
