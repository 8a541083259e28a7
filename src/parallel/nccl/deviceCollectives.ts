/**
 * The model-parallel collectives (modelParallel/collectives.ts) with each group's reductions on NCCL where the
 * group can run it (bootstrap.ts: the cuda backend and libnccl.so.2 on rank 0 of the group), the ring elsewhere.
 *
 * - allReduceTensor (the TP all-reduces of the f/g operators, the vocabulary-parallel loss, replicated gradients):
 *   device to device, enqueued on the backend's stream, no wait and no copy.
 * - allReduceSum on host arrays (the loss sums, gradient buckets of the DP × CP group) and, through it, allGather
 *   and allReduceMax: uploaded, all-reduced by NCCL, read back. NCCL's ring and tree give every rank the same
 *   values, as ours does.
 * - stageExchange (pipeline activations and their gradients between neighbouring stages): ncclSend/ncclRecv in one
 *   group on the PP group's communicator, device to device. The receiver names the shapes it expects (NCCL
 *   carries bytes, not shapes), and the stages' plans (pipelineSchedule.ts, withTransfers) group a send with the
 *   neighbour's receive where both would otherwise wait on each other.
 *
 * A group's communicator is made at its first collective and kept; every rank of the group meets that first
 * collective at the same point of its program, which is where the id is handed round.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Transport } from '../../runtime/transport.ts';
import { Collectives, type StageReceive, type StageSend } from '../modelParallel/collectives.ts';
import { collectivesLine, groupCollectives, type BootstrapOptions, type GroupCollectives } from './bootstrap.ts';

export interface DeviceCollectivesOptions {
  /** Where each group's line about its transport goes (logged by the group's rank 0). */
  log?: (line: string) => void;
  /** The bound on waiting for a host-array reduction (DISTILL_COLLECTIVE_TIMEOUT_S by default). */
  timeoutMs?: number;
  /** For tests: how groups are bootstrapped (bootstrap.ts). */
  bootstrap?: BootstrapOptions;
}

export class DeviceCollectives extends Collectives {
  private readonly groups = new Map<string, Promise<GroupCollectives>>();

  constructor(
    transport: Transport,
    private readonly o: DeviceCollectivesOptions = {},
  ) {
    super(transport);
  }

  /** The group's collectives, agreed on at its first use. */
  private of(group: readonly number[]): Promise<GroupCollectives> {
    const key = group.join(',');
    let c = this.groups.get(key);
    if (!c) {
      c = groupCollectives(this.transport, group, `[${key}]`, this.o.bootstrap).then((made) => {
        if (group[0] === this.rank) this.o.log?.(collectivesLine(`[${key}]`, group.length, made));
        return made;
      });
      this.groups.set(key, c);
    }
    return c;
  }

  override async allReduceTensor(group: readonly number[], t: tf.Tensor): Promise<tf.Tensor> {
    if (group.length === 1) return tf.clone(t);
    const c = await this.of(group);
    if (c.kind === 'ring') return super.allReduceTensor(group, t);
    // The ring's result is float32 whatever came in; so is this one.
    if (t.dtype === 'float32') return c.comm.allReduceSum(t);
    const f = tf.cast(t, 'float32');
    try {
      return await c.comm.allReduceSum(f);
    } finally {
      f.dispose();
    }
  }

  override async allReduceSum(group: readonly number[], data: Float32Array): Promise<void> {
    if (group.length === 1) return;
    const c = await this.of(group);
    if (c.kind === 'ring') return super.allReduceSum(group, data);
    const t = tf.tensor1d(data, 'float32');
    let out: tf.Tensor;
    try {
      out = await c.comm.allReduceSum(t);
    } finally {
      t.dispose();
    }
    try {
      await c.comm.synchronize(this.o.timeoutMs);
      data.set(await out.data<'float32'>());
    } finally {
      out.dispose();
    }
  }

  override async stageExchange(group: readonly number[], sends: StageSend[], receives: StageReceive[]): Promise<tf.Tensor[][]> {
    const c = await this.of(group);
    if (c.kind === 'ring') return super.stageExchange(group, sends, receives);
    const peer = (worker: number): number => {
      const r = group.indexOf(worker);
      if (r < 0) throw new RangeError(`pipeline transfer on worker ${this.rank}: worker ${worker} is not in the stage group [${group.join(', ')}]`);
      return r;
    };
    const flat = await c.comm.exchange(
      sends.flatMap((s) => s.tensors.map((tensor) => ({ peer: peer(s.to), tensor }))),
      receives.flatMap((r) => r.shapes.map((shape) => ({ peer: peer(r.from), shape }))),
    );
    let at = 0;
    return receives.map((r) => flat.slice(at, (at += r.shapes.length)));
  }

  /** Frees the groups' NCCL communicators after the run. */
  async dispose(): Promise<void> {
    for (const c of await Promise.all(this.groups.values())) if (c.kind === 'nccl') c.comm.destroy();
    this.groups.clear();
  }
}
