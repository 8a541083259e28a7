/**
 * The collectives model parallelism needs, on top of one Transport: all-reduce (sum, max) and all-gather over a
 * group, and point-to-point tensors between pipeline stages (stageExchange, over the transport's frames). The
 * reductions are all built on the ring all-reduce (an all-gather is the sum of buffers in which each rank filled
 * only its own slot: adding zeros is exact), so every rank ends with bit-identical values.
 *
 * Every rank of a group must call the group's collectives in the same order; each group (keyed by its members)
 * numbers its reductions, and the ring fails loudly when two ranks disagree.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ringAllReduce } from '../ringAllReduce.ts';
import { frameToTensor, tensorToFrame } from '../tensorFrame.ts';
import type { Transport } from '../../runtime/transport.ts';

export class Collectives {
  private readonly counters = new Map<string, number>();

  constructor(readonly transport: Transport) {}

  get rank(): number {
    return this.transport.rank;
  }

  private tag(group: readonly number[]): number {
    const key = group.join(',');
    const n = this.counters.get(key) ?? 0;
    this.counters.set(key, n + 1);
    return n;
  }

  /** Sums `data` over the group, in place. */
  async allReduceSum(group: readonly number[], data: Float32Array): Promise<void> {
    if (group.length > 1) await ringAllReduce(this.transport, group, data, this.tag(group));
  }

  /** The element-wise sum of `t` over the group, as a new tensor (the input is not disposed). */
  async allReduceTensor(group: readonly number[], t: tf.Tensor): Promise<tf.Tensor> {
    if (group.length === 1) return tf.clone(t);
    const data = Float32Array.from(await t.data<'float32'>());
    await this.allReduceSum(group, data);
    return tf.tensor(data, t.shape, 'float32');
  }

  /**
   * Every rank's array, end to end in group order; `lengths[i]` is the length rank group[i] contributes (known to
   * all ranks beforehand).
   */
  async allGather(group: readonly number[], mine: Float32Array, lengths: readonly number[]): Promise<Float32Array> {
    const me = group.indexOf(this.rank);
    if (me < 0) throw new RangeError(`all-gather: worker ${this.rank} is not in the group [${group.join(', ')}]`);
    if (lengths[me] !== mine.length)
      throw new RangeError(`all-gather on worker ${this.rank}: contributes ${mine.length} values, the group expects ${lengths[me]}`);
    const offsets = lengths.map((_, i) => lengths.slice(0, i).reduce((a, b) => a + b, 0));
    const all = new Float32Array(lengths.reduce((a, b) => a + b, 0));
    all.set(mine, offsets[me]);
    await this.allReduceSum(group, all);
    return all;
  }

  /** The element-wise maximum over the group. */
  async allReduceMax(group: readonly number[], data: Float32Array): Promise<Float32Array> {
    if (group.length === 1) return data;
    const all = await this.allGather(
      group,
      data,
      group.map(() => data.length),
    );
    const out = data.slice();
    for (let g = 0; g < group.length; g++) {
      const part = all.subarray(g * data.length, (g + 1) * data.length);
      for (let i = 0; i < out.length; i++) if (part[i] > out[i]) out[i] = part[i];
    }
    return out;
  }

  /**
   * Point-to-point between pipeline stages of `group` (the PP group, worker ids): these sends (not disposed; the
   * caller owns them) and receives as one group, the received tensors in `receives` order. A receive names the
   * shapes it expects, which a device-to-device transfer needs ahead (deviceCollectives.ts). Here the frames are
   * buffered by the transport, so sending first and then receiving cannot deadlock; the tag and the shapes are
   * checked.
   */
  async stageExchange(group: readonly number[], sends: StageSend[], receives: StageReceive[]): Promise<tf.Tensor[][]> {
    for (const s of sends) await this.send(s.to, s.tag, s.tensors);
    const out: tf.Tensor[][] = [];
    try {
      for (const r of receives) {
        out.push(await this.receive(r.from, r.tag));
        checkStageShapes(
          this.rank,
          r,
          out[out.length - 1].map((t) => t.shape),
        );
      }
    } catch (e) {
      tf.dispose(out.flat());
      throw e;
    }
    return out;
  }

  /** Sends tensors to another stage over the frames (not disposed; the caller owns them). */
  async send(to: number, tag: string, tensors: tf.Tensor[]): Promise<void> {
    const frames = await Promise.all(tensors.map((t) => tensorToFrame(t)));
    this.transport.send(to, { kind: 'stageTensors', tag, tensors: frames });
  }

  /** The next tensors from another stage, which must carry `tag`. */
  async receive(from: number, tag: string): Promise<tf.Tensor[]> {
    const m = await this.transport.receive(from, 'stageTensors');
    if (m.tag !== tag) {
      throw new Error(
        `pipeline out of step on worker ${this.rank}: expected ${tag} from worker ${from}, got ${m.tag}. The stages disagree on the schedule; this is a bug.`,
      );
    }
    return m.tensors.map((f) => frameToTensor(f));
  }
}

/** A stage's tensors for a neighbour (worker `to`), named by `tag` ("step 3 micro 1 activation"). */
export interface StageSend {
  to: number;
  tag: string;
  tensors: tf.Tensor[];
}

/** What a stage expects from a neighbour (worker `from`): the tensors' shapes, in order. */
export interface StageReceive {
  from: number;
  tag: string;
  shapes: number[][];
}

/** Refuses tensors that are not what the receiving stage computed it would get (a bug in the stages' plans). */
function checkStageShapes(rank: number, r: StageReceive, got: readonly (readonly number[])[]): void {
  const same = got.length === r.shapes.length && got.every((s, i) => s.length === r.shapes[i].length && s.every((d, j) => d === r.shapes[i][j]));
  if (!same)
    throw new Error(
      `pipeline ${r.tag} on worker ${rank}: worker ${r.from} sent shapes ${got.map((s) => `[${s}]`).join(' ')}, this stage expected ${r.shapes.map((s) => `[${s}]`).join(' ')} (a bug in the stages' plans)`,
    );
}
