/**
 * Device time per CUDA kernel and cuBLAS product, measured with CUDA events around each launch (DISTILL_CUDA_PROFILE=1,
 * or `startKernelProfile()`). Each timed launch waits for its end event, so the run is slower while profiling, but
 * the times are the GPU's own and no scope is counted twice (tf.profile nests custom-gradient scopes over their
 * kernels). The table says which kernels (by our kernel names, products by their m·n·k) to make faster first.
 */
import type { CudaDriver, Handle } from './driver.ts';

interface Entry {
  ms: number;
  count: number;
}

export class KernelProfile {
  private readonly entries = new Map<string, Entry>();
  private readonly start: Handle;
  private readonly end: Handle;

  constructor(private readonly driver: CudaDriver) {
    this.start = driver.createEvent();
    this.end = driver.createEvent();
  }

  /** Runs `launch` between two events and adds the time between them to `name`. */
  time(name: string, launch: () => void): void {
    this.driver.record(this.start);
    launch();
    this.driver.record(this.end);
    const ms = this.driver.elapsed(this.start, this.end);
    const e = this.entries.get(name);
    if (e) {
      e.ms += ms;
      e.count++;
    } else this.entries.set(name, { ms, count: 1 });
  }

  reset(): void {
    this.entries.clear();
  }

  /** The `top` kernels by summed device time, as a table. */
  table(top = 30): string {
    const rows = [...this.entries].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((s, [, e]) => s + e.ms, 0);
    const count = rows.reduce((s, [, e]) => s + e.count, 0);
    const lines = rows
      .slice(0, top)
      .map(([k, e]) => `${e.ms.toFixed(2).padStart(10)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  x${String(e.count).padEnd(6)} ${k}`);
    return [`${count} launches, ${total.toFixed(1)} ms of device time`, ...lines].join('\n');
  }
}
