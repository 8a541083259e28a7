/**
 * The collectives model parallelism needs, on top of one Transport: all-reduce (sum, max) and all-gather over a
 * group, and point-to-point tensors between pipeline stages. All of them are built on the ring all-reduce
 * (an all-gather is the sum of buffers in which each rank filled only its own slot: adding zeros is exact), so
 * every rank ends with bit-identical values.
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

  /** Sends tensors to another stage (not disposed; the caller owns them). */
  async send(to: number, tag: string, tensors: tf.Tensor[]): Promise<void> {
    const frames = await Promise.all(tensors.map((t) => tensorToFrame(t)));
    this.transport.send(to, { kind: 'stageTensors', tag, tensors: frames });
  }

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
