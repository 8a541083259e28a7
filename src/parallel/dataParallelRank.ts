/**
 * What turns run() into one data-parallel rank: its slice of every global batch, the gradient all-reduce before
 * the optimizer step (with the agreed stop riding along), the step metrics summed on rank 0, and whether this
 * rank is the one that writes checkpoints, logs and the final student.
 *
 * Over NCCL the all-reduce starts during the backward pass (`reductionDuringBackward`, --overlap_grad_reduce):
 * from the second step on, since the first step's reduction is where the ranks agree on NCCL or the ring.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { StepResult } from '../train/batch.ts';
import { DataParallelCredits } from './dataParallelCredits.ts';
import { allReduceGradients, DEFAULT_BUCKET_BYTES } from './gradientBuckets.ts';
import { ringAllReduce } from './ringAllReduce.ts';
import { collectivesLine, groupCollectives, type GroupCollectives } from './nccl/bootstrap.ts';
import { allReduceGradientBuckets, BucketedGradientReduction } from './nccl/bucketedAllReduce.ts';
import { planGradientBuckets, type GradientBucket } from './nccl/gradientBucketPlan.ts';
import type { ReductionDuringBackward } from '../train/optimizerStep.ts';
import type { Communicator } from './nccl/communicator.ts';
import type { RemoteTeacher } from './remoteTeacher.ts';
import type { Transport } from '../runtime/transport.ts';
import { LAUNCHER } from '../runtime/messages.ts';

export interface StepSink {
  onStep(result: StepResult): void;
}

export interface DataParallelRankOptions {
  transport: Transport;
  dpRank: number;
  dpSize: number;
  /** Worker ids of the ranks, in rank order. */
  group: number[];
  deviceIndex: number;
  globalBatchSize: number;
  microBatchSize: number;
  bucketBytes?: number;
  /** The teacher on its own worker, or undefined when this worker runs its own teacher. */
  remoteTeacher?: RemoteTeacher;
  /** Called once when the ranks have agreed to stop early (the worker aborts its run, so it reports a stop). */
  onStopAgreed: () => void;
  /** Where the line saying which transport the gradients take goes; by default the launcher's log, as a worker's lines do. */
  log?: (line: string) => void;
  /** A communicator to sum the gradients with, even at DP 1 (the one-rank NCCL test); by default the group's (nccl/bootstrap.ts). */
  communicator?: Communicator;
  /** Start the NCCL all-reduce of each bucket during the backward pass (--overlap_grad_reduce; default true). */
  overlapGradReduce?: boolean;
}

export class DataParallelRank {
  readonly rank: number;
  readonly size: number;
  readonly leader: boolean;
  readonly deviceIndex: number;
  readonly remoteTeacher?: RemoteTeacher;
  private creditPool: DataParallelCredits | null = null;
  private startStep = 0;
  private reductions = 0;
  private stopAgreed = false;
  private gathered: Promise<void> = Promise.resolve();
  private gatherError: Error | null = null;
  private stopWanted = false;
  /** How the gradients are summed: NCCL on cuda, the ring elsewhere; agreed on at the first reduction, once. */
  private collectives: Promise<GroupCollectives> | null = null;
  /** The NCCL communicator once agreed on (null on the ring), and the buckets every step uses. */
  private nccl: { comm: Communicator; plan: GradientBucket[] | null } | null = null;
  /** The reduction the backward pass started, which the step's reduceGradients finishes. */
  private duringBackward: BucketedGradientReduction | null = null;

  constructor(private readonly o: DataParallelRankOptions) {
    this.rank = o.dpRank;
    this.size = o.dpSize;
    this.leader = o.dpRank === 0;
    this.deviceIndex = o.deviceIndex;
    this.remoteTeacher = o.remoteTeacher;
  }

  /** readBatches options: this rank's slice of each global batch. */
  get readSlice(): { dpRank: number; dpSize: number } {
    return { dpRank: this.rank, dpSize: this.size };
  }

  credits(limit: number, startStep: number): DataParallelCredits {
    this.startStep = startStep;
    this.creditPool = new DataParallelCredits(limit, startStep, this.o.globalBatchSize / (this.o.microBatchSize * this.size));
    if (this.stopWanted) this.creditPool.close();
    return this.creditPool;
  }

  /** A stop asked for from outside (the launcher): agreed with the other ranks at the next all-reduce. */
  requestStop(): void {
    this.stopWanted = true;
    this.creditPool?.close();
  }

  /** optimizerStep's hook: sums the gradients over the ranks (a SUM: each micro-batch loss is already weighted by its share of the global batch). */
  readonly reduceGradients = async (grads: Map<string, tf.Tensor>): Promise<void> => {
    const pool = this.creditPool;
    if (!pool) throw new Error('DataParallelRank: credits() must be called before the first step (pipelines/distill.ts does)');
    // backward calls this once per step, in order, so the count is the step.
    const step = this.startStep + this.reductions++;
    const flag = pool.stopRequested ? 1 : 0;
    let stop = flag;
    if (this.size > 1 || this.o.communicator) {
      const { transport, group } = this.o;
      const collectives = await (this.collectives ??= this.agreeOnCollectives());
      const bucketBytes = this.o.bucketBytes ?? DEFAULT_BUCKET_BYTES;
      const started = this.duringBackward;
      this.duringBackward = null;
      if (started) {
        // The flag rode in the last bucket, read when it started.
        [stop] = await started.finish(grads);
      } else if (collectives.kind === 'nccl') {
        // Device to device, in buckets from the last layer back; the plan is the same every step.
        const nccl = (this.nccl ??= { comm: collectives.comm, plan: null });
        nccl.plan ??= planGradientBuckets(
          [...grads].map(([name, t]) => ({ name, size: t.size })),
          bucketBytes,
        );
        [stop] = await allReduceGradientBuckets(grads, collectives.comm, nccl.plan, [flag]);
      } else {
        const tagBase = step * 4096;
        [stop] = await allReduceGradients(grads, (bucket, i) => ringAllReduce(transport, group, bucket, tagBase + i), bucketBytes, [flag]);
      }
    }
    if (stop > 0 && !this.stopAgreed) {
      this.stopAgreed = true;
      pool.stopAfter(step + pool.lookahead);
      this.o.onStopAgreed();
    }
  };

  /** backward's hook: over NCCL, from the second step, each bucket's all-reduce starts once its gradients are final. */
  readonly reductionDuringBackward: ReductionDuringBackward = {
    hookFor: () => {
      const pool = this.creditPool;
      if (this.o.overlapGradReduce === false || !this.nccl?.plan || !pool) return null;
      if (this.duringBackward) throw new Error('DataParallelRank: a step started its reduction before the last one was finished (a bug)');
      if (this.leader && !this.saidOverlap) {
        this.saidOverlap = true;
        this.log(`group dp: gradient buckets are all-reduced during the backward pass from here on (--overlap_grad_reduce), on a second stream`);
      }
      const reduction = new BucketedGradientReduction(this.nccl.comm, this.nccl.plan, () => [pool.stopRequested ? 1 : 0]);
      this.duringBackward = reduction;
      return (name, grad) => reduction.ready(name, grad);
    },
  };
  private saidOverlap = false;

  private log(line: string): void {
    if (this.o.log) this.o.log(line);
    else if (this.size > 1) this.o.transport.send(LAUNCHER, { kind: 'log', line });
  }

  private async agreeOnCollectives(): Promise<GroupCollectives> {
    const c: GroupCollectives = this.o.communicator
      ? { kind: 'nccl', comm: this.o.communicator }
      : await groupCollectives(this.o.transport, this.o.group, 'dp');
    if (this.leader) this.log(collectivesLine('dp', this.size, c));
    return c;
  }

  /** Frees the NCCL communicator after the run (the ring holds nothing). */
  async dispose(): Promise<void> {
    const c = await this.collectives;
    if (c?.kind === 'nccl' && !this.o.communicator) c.comm.destroy();
  }

  /**
   * Wraps the run's step sinks. Rank r > 0 sends its losses to rank 0 and keeps its own result; rank 0 waits for
   * every rank's share of the step, sums the losses (token-weighted means for KD and CE), and hands the whole step
   * to the sinks, in order. Sinks are synchronous, so the wait runs beside the pipeline; flush() awaits it.
   */
  gatherSteps(sinks: StepSink[]): StepSink {
    const { transport, group } = this.o;
    if (this.size === 1)
      return {
        onStep: (r) => {
          for (const s of sinks) s.onStep(r);
        },
      };
    if (!this.leader) {
      return {
        onStep: (r) => {
          transport.send(group[0], {
            kind: 'stepStats',
            step: r.step,
            loss: r.loss,
            kdLoss: r.kdLoss ?? null,
            ceLoss: r.ceLoss ?? null,
            tokens: r.tokens,
            elapsedMs: r.elapsedMs,
            skipped: r.skipped,
          });
          for (const s of sinks) s.onStep(r);
        },
      };
    }
    return {
      onStep: (own) => {
        this.gathered = this.gathered
          .then(async () => {
            if (this.gatherError) return;
            const all = [
              { loss: own.loss, kdLoss: own.kdLoss ?? null, ceLoss: own.ceLoss ?? null, tokens: own.tokens, elapsedMs: own.elapsedMs, skipped: own.skipped },
            ];
            for (const w of group.slice(1)) {
              const m = await transport.receive(w, 'stepStats');
              if (m.step !== own.step)
                throw new Error(`rank 0 got step ${m.step}'s metrics from worker ${w} while summing step ${own.step}: the ranks are out of step (a bug)`);
              all.push(m);
            }
            const tokens = all.reduce((a, x) => a + x.tokens, 0);
            const mean = (k: 'kdLoss' | 'ceLoss'): number | undefined =>
              all.every((x) => x[k] !== null) ? all.reduce((a, x) => a + x[k]! * x.tokens, 0) / tokens : undefined;
            const result: StepResult = {
              ...own,
              loss: all.reduce((a, x) => a + x.loss, 0),
              kdLoss: mean('kdLoss'),
              ceLoss: mean('ceLoss'),
              tokens,
              elapsedMs: Math.max(...all.map((x) => x.elapsedMs)),
              skipped: all.some((x) => x.skipped),
            };
            for (const s of sinks) s.onStep(result);
          })
          .catch((e: unknown) => {
            this.gatherError ??= e instanceof Error ? e : new Error(String(e));
          });
      },
    };
  }

  /** Waits until every step has reached the sinks; rethrows a failure of the gathering. */
  async flush(): Promise<void> {
    await this.gathered;
    if (this.gatherError) throw this.gatherError;
  }
}
