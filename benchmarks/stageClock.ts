/**
 * Per-stage busy time of the streaming pipeline, measured from outside the operators (they stay exactly as
 * pipelines/distill.ts composes them): taps between stages and a Credits subclass mark when each stage starts and
 * ends. Backward runs the student's forward, the loss and the backward pass under one tape, so those three are one
 * figure, "student fwd+bwd"; it ends when backward returns the micro-batch's credit, and the optimizer stage
 * (global-norm clipping + AdamW) runs from there to the step's result.
 *
 * For the intervals to be one stage's own time, the stages must not interleave: the credit of a step's last
 * micro-batch is handed back only once that step's result is out, so the next read cannot slip into the
 * optimizer's awaits. With one compute thread (wasm, cpu) this costs no throughput; on async backends (webgpu)
 * a stage's time is its enqueue time plus whatever readback it waits on.
 */
import { tap, type MonoTypeOperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { Credits } from '../src/train/credits.ts';
import type { BatchPosition } from '../src/train/batch.ts';

export const STAGES = ['read', 'teacherLogits', 'student fwd+bwd', 'optimizer'] as const;
export type Stage = (typeof STAGES)[number];

export interface MemoryPeak {
  /** Largest tf.memory().numBytes seen at a stage boundary (tensors alive on the backend). */
  tfBytes: number;
  tfTensors: number;
  /** Process peak resident set (getrusage maxrss), which includes the wasm heap. */
  rssBytes: number;
  /**
   * The device allocator's own peak of bytes held by tensors over the whole run (cuda's `peakBytesInGPU`, which
   * tf.memory() carries from the backend), null where the backend keeps none (webgpu, wasm, cpu). Unlike tfBytes,
   * sampled between stages, it sees the inside of backward, where the saved activations are all alive at once.
   */
  deviceBytes: number | null;
}

/** The backend's peak device bytes, when it reports one (the cuda backend does; tfjs's own backends do not). */
export function devicePeakBytes(): number | null {
  const peak = (tf.memory() as { peakBytesInGPU?: unknown }).peakBytesInGPU;
  return typeof peak === 'number' && Number.isFinite(peak) ? peak : null;
}

export class StageClock {
  /** Milliseconds per stage, over measured steps only (step >= warmup). */
  readonly totals: Record<Stage, number> = { read: 0, teacherLogits: 0, 'student fwd+bwd': 0, optimizer: 0 };
  readonly peak: MemoryPeak = { tfBytes: 0, tfTensors: 0, rssBytes: 0, deviceBytes: null };
  /** When the last warm-up step's result came out, and the last measured one's. */
  measureStart: number | null = null;
  lastStepEnd = 0;
  private marks = new Map<Stage, number>();
  private step = -1;
  private micro: BatchPosition | null = null;

  constructor(readonly warmup: number) {}

  begin(stage: Stage): void {
    this.marks.set(stage, performance.now());
  }

  end(stage: Stage): void {
    const t0 = this.marks.get(stage);
    if (t0 === undefined) return;
    this.marks.delete(stage);
    if (this.step >= this.warmup) this.totals[stage] += performance.now() - t0;
  }

  /** Samples tf.memory() at a stage boundary: the peak tensor footprint is between stages, not inside kernels. */
  sampleMemory(): void {
    const m = tf.memory();
    this.peak.tfBytes = Math.max(this.peak.tfBytes, m.numBytes);
    this.peak.tfTensors = Math.max(this.peak.tfTensors, m.numTensors);
  }

  /** Placed first in the chain: a batch has been read; its step is now the current one. */
  afterRead<T extends { position: BatchPosition }>(): MonoTypeOperatorFunction<T> {
    return tap((b) => {
      this.step = b.position.step;
      this.end('read');
      this.begin('teacherLogits');
    });
  }

  afterTeacher<T>(): MonoTypeOperatorFunction<T> {
    return tap(() => {
      this.end('teacherLogits');
      this.sampleMemory();
    });
  }

  /** Placed just before backward: the student's forward, loss and backward start now. */
  beforeBackward<T extends { position: BatchPosition }>(): MonoTypeOperatorFunction<T> {
    return tap((b) => {
      this.micro = b.position;
      this.begin('student fwd+bwd');
    });
  }

  /** Placed after backward: a step's result is out. */
  afterStep<T>(): MonoTypeOperatorFunction<T> {
    return tap(() => {
      this.end('optimizer');
      this.sampleMemory();
      const now = performance.now();
      if (this.step === this.warmup - 1) this.measureStart = now;
      this.lastStepEnd = now;
      this.pending?.();
      this.pending = null;
    });
  }

  /** Called by TimedCredits when backward gives back a micro-batch's credit. */
  onRelease(giveBack: () => void): void {
    this.sampleMemory();
    this.end('student fwd+bwd');
    const last = this.micro !== null && this.micro.micro === this.micro.numMicro - 1;
    if (!last) return giveBack();
    this.begin('optimizer');
    this.pending = giveBack;
  }

  private pending: (() => void) | null = null;

  finish(): void {
    this.peak.rssBytes = process.resourceUsage().maxRSS * 1024;
    this.sampleMemory();
    // A running maximum kept by the allocator: read once, at the end.
    this.peak.deviceBytes = devicePeakBytes();
  }
}

/** Credits that tell the clock when a read starts (a credit is granted) and when backward is done with a micro-batch. */
export class TimedCredits extends Credits {
  constructor(private readonly clock: StageClock) {
    super(1);
  }

  override acquire(): Promise<boolean> {
    return super.acquire().then((ok) => {
      this.clock.begin('read');
      return ok;
    });
  }

  override release(n = 1): void {
    this.clock.onRelease(() => super.release(n));
  }
}
