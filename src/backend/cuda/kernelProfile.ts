/**
 * Device time per CUDA kernel and cuBLAS product, measured with CUDA events around each launch (DISTILL_CUDA_PROFILE=1,
 * or `startKernelProfile()`). The table says which kernels (by our kernel names, products by their m·n·k) to make
 * faster first.
 *
 * Two things keep the times the kernels' own. A start event recorded on an idle stream is stamped at once, while
 * the host is still issuing the launch (koffi, cuBLAS's host code): that latency, 5–30 µs, would be counted as the
 * kernel's, and small kernels would look several times slower than they are. So a spin kernel (`delay`) runs before
 * each start event, and the stream is never waited on per launch: the GPU stays behind the host, and each start
 * event is stamped when the previous work ends, just before the kernel starts. The event pairs are read in batches.
 * The run is slower while profiling (one spin per launch), the per-kernel times are not.
 */
import type { CudaDriver, Handle } from './driver.ts';

interface Entry {
  ms: number;
  count: number;
}

interface Pending {
  key: string;
  start: Handle;
  end: Handle;
}

/** Event pairs in flight before they are read back (each pair is two driver events, reused). */
const BATCH = 1024;

/** Spin time before each timed launch: longer than the host's cost of recording an event and issuing a launch. */
export const PROFILE_SPIN_NS = 40_000;

export function spinSource(): string {
  return `extern "C" __global__ void profile_spin(long long ns) {
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}`;
}

export class KernelProfile {
  private readonly entries = new Map<string, Entry>();
  private readonly pending: Pending[] = [];
  private readonly events: Handle[] = [];

  /** `delay` enqueues the spin kernel on the stream (untimed). */
  constructor(
    private readonly driver: CudaDriver,
    private readonly delay: () => void,
  ) {}

  private event(): Handle {
    return this.events.pop() ?? this.driver.createEvent();
  }

  /** Runs `launch` between two events and adds the time between them to `name` (and to `name` at `detail`, the launch's size). */
  time(name: string, launch: () => void, detail = ''): void {
    this.delay();
    const start = this.event();
    const end = this.event();
    this.driver.record(start);
    launch();
    this.driver.record(end);
    this.pending.push({ key: detail ? `${name}\t${detail}` : name, start, end });
    if (this.pending.length >= BATCH) this.flush();
  }

  /** Reads the recorded pairs (waiting for the last) into the totals. */
  private flush(): void {
    for (const p of this.pending) {
      const ms = this.driver.elapsed(p.start, p.end);
      const e = this.entries.get(p.key);
      if (e) {
        e.ms += ms;
        e.count++;
      } else this.entries.set(p.key, { ms, count: 1 });
      this.events.push(p.start, p.end);
    }
    this.pending.length = 0;
  }

  reset(): void {
    this.flush();
    this.entries.clear();
  }

  /** The `top` kernels by summed device time, as a table; `bySize` keeps each launch size (the grid) apart. */
  table(top = 30, bySize = false): string {
    this.flush();
    const merged = new Map<string, Entry>();
    for (const [key, e] of this.entries) {
      const k = bySize ? key.replace('\t', ' ') : key.split('\t')[0];
      const m = merged.get(k);
      if (m) {
        m.ms += e.ms;
        m.count += e.count;
      } else merged.set(k, { ...e });
    }
    const rows = [...merged].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((s, [, e]) => s + e.ms, 0);
    const count = rows.reduce((s, [, e]) => s + e.count, 0);
    const lines = rows
      .slice(0, top)
      .map(
        ([k, e]) =>
          `${e.ms.toFixed(2).padStart(10)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  x${String(e.count).padEnd(6)} ${(e.ms / e.count).toFixed(3).padStart(7)} ms each  ${k}`,
      );
    return [`${count} launches, ${total.toFixed(1)} ms of device time`, ...lines].join('\n');
  }
}
