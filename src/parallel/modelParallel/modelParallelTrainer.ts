/**
 * One rank's optimizer step under a TP × CP × DP × PP layout: the micro-batches of its data-parallel slice run
 * through its pipeline stage in 1F1B order (teacher forward, student forward, and on the last stage the loss;
 * then the student's backward), the gradients are summed where Megatron sums them (over DP × CP, over the ranks
 * sharing a replicated KV head, between the two copies of tied embeddings), clipped by the global norm over the
 * whole model, and the rank's AdamW updates its own slices.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/config.ts';
import type { AdamW } from '../../optim/adamw.ts';
import type { StepGradients, StepLossSums, StepResult, TokenBatch } from '../../train/batch.ts';
import { meanLoss, type MeanLossOptions } from '../../train/meanLoss.ts';
import { OptimizerStep, type GradientReduction, type NanPolicy } from '../../train/optimizerStep.ts';
import { allReduceGradients, DEFAULT_BUCKET_BYTES } from '../gradientBuckets.ts';
import { coordsOf, groupOf, rankOf, worldSize, type ParallelLayout, type RankCoords } from '../layout.ts';
import type { Collectives } from './collectives.ts';
import { oneForwardOneBackward, type ScheduleAction } from './pipelineSchedule.ts';
import { computeOp, Tape, type Op } from './segmentTape.ts';
import { ShardedStage } from './shardedTransformer.ts';
import { embeddingName, type LocalParam } from './shardSpec.ts';
import { takePositions } from './sequenceSplit.ts';
import { runWithStageTransfers, type StageTransferContext } from './stageTransfers.ts';
import { vocabParallelLossOp } from './vocabParallelLoss.ts';

export interface ShardedModel {
  config: ModelConfig;
  /** This rank's slices, by Hugging Face name. */
  params: Map<string, tf.Variable>;
  /** How each slice relates to the full tensor (shardSpec.ts). */
  spec: Map<string, LocalParam>;
}

export interface TrainerOptions {
  layout: ParallelLayout;
  rank: number;
  coll: Collectives;
  student: ShardedModel;
  /** null when pretraining. */
  teacher: ShardedModel | null;
  loss: MeanLossOptions;
  optimizer: AdamW;
  clipGrad: number;
  lrAt: (step: number) => number;
  nanPolicy: NanPolicy;
  /** Non-finite steps in a row after which even `skip` stops (default 10, as for one worker). */
  maxConsecutiveNanSteps?: number;
  globalBatchSize: number;
  bucketBytes?: number;
  /** Asked to stop (Ctrl-C, the launcher): agreed with every rank in the step's all-reduce. */
  stopRequested?: () => boolean;
}

const LOSS_OUTPUTS: [string, string, string] = ['loss', 'kdSum', 'ceSum'];

export class ModelParallelTrainer {
  readonly coords: RankCoords;
  private readonly studentStage: ShardedStage;
  private readonly teacherStage: ShardedStage | null;
  /** What the transfers between this rank's stage and its neighbours need (stageTransfers.ts). */
  private readonly stageTransfers: StageTransferContext;
  private readonly lossOps = new Map<string, Op>();
  private globalTokens = 0;
  private firstSample = 0;
  /** The step every layout takes (src/train/optimizerStep.ts), with this layout's reduction. */
  private readonly optimizerStep: OptimizerStep;
  /** Some rank asked to stop during the last step: every rank stops after it. */
  stopAgreed = false;

  constructor(private readonly o: TrainerOptions) {
    this.coords = coordsOf(o.layout, o.rank);
    const stage = (m: ShardedModel, prefix: string): ShardedStage =>
      new ShardedStage({ config: m.config, layout: o.layout, rank: o.rank, coords: this.coords, coll: o.coll, prefix, paramNames: new Set(m.params.keys()) });
    this.studentStage = stage(o.student, 's.');
    this.teacherStage = o.teacher ? stage(o.teacher, 't.') : null;
    this.stageTransfers = {
      layout: o.layout,
      rank: o.rank,
      coords: this.coords,
      coll: o.coll,
      studentStage: this.studentStage,
      teacherStage: this.teacherStage,
    };
    this.optimizerStep = new OptimizerStep({ ...o, reduce: this.reduction });
  }

  private get isLast(): boolean {
    return this.coords.pp === this.o.layout.pp - 1;
  }

  private stageRank(pp: number): number {
    return rankOf(this.o.layout, { ...this.coords, pp });
  }

  /** The last stage's loss; for validation (`evaluation`) both the KD and the CE sums are computed whatever α is. */
  private lossOp(evaluation = false): Op {
    const key = evaluation ? 'evaluation' : 'loss';
    let op = this.lossOps.get(key);
    if (op) return op;
    const c = this.o.student.config;
    const head = c.tieWordEmbeddings ? embeddingName(c) : 'lm_head.weight';
    const tHeadName = this.o.teacher ? (this.o.teacher.config.tieWordEmbeddings ? embeddingName(this.o.teacher.config) : 'lm_head.weight') : null;
    const teacherHead = tHeadName ? (this.o.teacher!.params.get(tHeadName) as tf.Tensor2D) : null;
    const inputs = { hidden: this.studentStage.lossInputName, teacherHidden: 't.hidden', labels: 'labels', mask: 'mask' };
    const kdRatio = !teacherHead ? 0 : evaluation ? 0.5 : this.o.loss.kdRatio;
    if (this.o.layout.tp > 1) {
      // The padding of each head slice, from the shard spec it was loaded by: only the last stage holds the heads.
      const studentVocab = this.o.student.spec.get(head)?.vocab;
      const teacherVocab = tHeadName ? (this.o.teacher!.spec.get(tHeadName)?.vocab ?? null) : null;
      const vocab = studentVocab ? { student: studentVocab, teacher: teacherVocab } : undefined;
      op = vocabParallelLossOp(
        { ...inputs, head, outputs: LOSS_OUTPUTS },
        {
          options: this.o.loss,
          kdRatio,
          coll: this.o.coll,
          tpGroup: groupOf(this.o.layout, this.o.rank, ['tp']),
          vocab,
          teacherHead,
          globalTokens: () => this.globalTokens,
        },
      );
    } else {
      const loss = { ...this.o.loss, kdRatio };
      op = computeOp(
        'loss',
        { inputs: Object.values(inputs), outputs: LOSS_OUTPUTS, params: [head], differentiable: [true, false, false, false] },
        ([h, ht, labels, mask], [w]) => {
          const r = meanLoss(loss, {
            studentHidden: h as tf.Tensor2D,
            studentHead: w as tf.Tensor2D,
            mask: mask as tf.Tensor1D,
            labels: labels as tf.Tensor1D,
            teacher: teacherHead ? { kind: 'hidden', hidden: ht as tf.Tensor2D, head: teacherHead } : undefined,
            what: `rank ${this.o.rank}'s micro-batch`,
          });
          const count = tf.sum(mask);
          const G = this.globalTokens;
          return [
            G > 0 ? tf.div(tf.mul(r.loss, count), G) : tf.scalar(0),
            r.kd ? tf.mul(r.kd, count) : tf.scalar(0),
            r.ce ? tf.mul(r.ce, count) : tf.scalar(0),
          ];
        },
      );
    }
    this.lossOps.set(key, op);
    return op;
  }

  /** This rank's positions of a micro-batch: ids for the first stage, labels and mask for the last. */
  private async localBatch(mb: TokenBatch): Promise<{ ids: tf.Tensor; labels: tf.Tensor; mask: tf.Tensor; count: number; batch: number; seq: number }> {
    const [b, t] = mb.inputIds.shape;
    const { local } = this.studentStage.split(t);
    const ids = takePositions(Int32Array.from(await mb.inputIds.data()), b, t, local);
    const labels = takePositions(Int32Array.from(await mb.labels.data()), b, t, local);
    const mask = takePositions(Float32Array.from(await mb.lossMask.data()), b, t, local);
    return {
      ids: tf.tensor2d(ids, [b, local.length], 'int32'),
      labels: tf.tensor1d(labels, 'int32'),
      mask: tf.tensor1d(mask),
      count: mask.reduce((a, x) => a + x, 0),
      batch: b,
      seq: t,
    };
  }

  /**
   * One micro-batch's forward through this stage from what the previous stage sent (`received`, taken over; none
   * on the first stage): the teacher's part (kept only as the activation handed on), then the student's, with the
   * loss on the last stage. Returns the student's tape for the backward and what goes to the next stage.
   */
  private async forwardMicro(
    batch: TokenBatch,
    received: tf.Tensor[] | undefined,
    lossOp: Op,
    stats: tf.Tensor[],
  ): Promise<{ tape: Tape; count: number; toNext: tf.Tensor[] | null }> {
    const S = this.studentStage;
    const T = this.teacherStage;
    const first = this.coords.pp === 0;
    const mb = await this.localBatch(batch);
    const given: Record<string, tf.Tensor> = {};
    let teacherIn: tf.Tensor | null = null;
    if (first) {
      given.ids = mb.ids;
    } else {
      mb.ids.dispose();
      given[S.inputName] = received![0];
      teacherIn = received![1] ?? null;
    }
    let teacherOut: tf.Tensor | null = null;
    if (T) {
      const tt = new Tape(T.ops(mb.batch, mb.seq), this.o.teacher!.params);
      await tt.forward(first ? { ids: tf.clone(mb.ids) } : { [T.inputName]: teacherIn! });
      teacherOut = tf.clone(tt.acts.get(T.outputName)!);
      tt.dispose();
    }
    const ops = this.isLast ? [...S.ops(mb.batch, mb.seq), lossOp] : S.ops(mb.batch, mb.seq);
    const tape = new Tape(ops, this.o.student.params);
    if (this.isLast) {
      await tape.forward({ ...given, 't.hidden': teacherOut ?? tf.zeros([1, 1]), labels: mb.labels, mask: mb.mask });
      stats.push(...LOSS_OUTPUTS.map((n) => tf.clone(tape.acts.get(n)!)));
      return { tape, count: mb.count, toNext: null };
    }
    mb.labels.dispose();
    mb.mask.dispose();
    await tape.forward(given);
    return { tape, count: 0, toNext: [tf.clone(tape.acts.get(S.outputName)!), ...(teacherOut ? [teacherOut] : [])] };
  }

  /** One global batch: this rank's gradients (1F1B over the stages), then the optimizer step every layout takes. */
  async step(micros: TokenBatch[]): Promise<StepResult> {
    return this.optimizerStep.take(await this.gradients(micros));
  }

  /**
   * This rank's part of a global batch's gradients and loss sums, through its pipeline stage in 1F1B order; the
   * optimizer step reduces them with `reduction`.
   */
  async gradients(micros: TokenBatch[]): Promise<StepGradients> {
    const started = performance.now();
    const { layout } = this.o;
    const step = micros[0].position.step;
    this.globalTokens = micros[0].globalBatchTokens;
    this.firstSample = micros[0].position.firstSample;
    const S = this.studentStage;
    const first = this.coords.pp === 0;
    const tapes = new Map<number, Tape>();
    const grads = new Map<string, tf.Tensor>();
    const stats: tf.Tensor[] = [];
    let count = 0;
    await runWithStageTransfers(
      this.stageTransfers,
      oneForwardOneBackward(this.coords.pp, layout.pp, micros.length),
      `step ${step}`,
      micros,
      async (a, received) => {
        if (a.kind === 'forward') {
          const f = await this.forwardMicro(micros[a.micro], received, this.lossOp(), stats);
          count += f.count;
          tapes.set(a.micro, f.tape);
          return f.toNext;
        }
        const tape = tapes.get(a.micro)!;
        tapes.delete(a.micro);
        try {
          const seeds = this.isLast ? { loss: tf.scalar(1) } : { [S.outputName]: received![0] };
          const dIn = await tape.backward(seeds, grads, first ? [] : [S.inputName]);
          return first ? null : [dIn.get(S.inputName) ?? tf.zerosLike(tape.acts.get(S.inputName)!)];
        } finally {
          tape.dispose();
        }
      },
    );
    return this.localSums(step, grads, stats, count, started);
  }

  /**
   * Validation: forward only over `micros` (the same on every DP rank; the first DP replica computes, the others
   * only join the final sum), the student's CE and the KD divergence (at τ, without τ²) as token-weighted means.
   */
  async evaluate(micros: TokenBatch[], round: number): Promise<{ studentCe: number; kdLoss?: number; tokens: number }> {
    const stats: tf.Tensor[] = [];
    let count = 0;
    if (this.coords.dp === 0) {
      const forwards = micros.map((_, micro): ScheduleAction => ({ kind: 'forward', micro }));
      await runWithStageTransfers(this.stageTransfers, forwards, `validation ${round}`, micros, async (a, received) => {
        const f = await this.forwardMicro(micros[a.micro], received, this.lossOp(true), stats);
        count += f.count;
        f.tape.dispose();
        return f.toNext;
      });
    }
    const sums = new Float32Array(3);
    if (this.isLast && this.coords.tp === 0 && this.coords.dp === 0) {
      const values = await readScalars(stats);
      for (let i = 0; i < values.length; i += 3) {
        sums[0] += values[i + 1];
        sums[1] += values[i + 2];
      }
      sums[2] = count;
    }
    for (const s of stats) s.dispose();
    await this.o.coll.allReduceSum(
      Array.from({ length: worldSize(this.o.layout) }, (_, r) => r),
      sums,
    );
    const n = Math.max(1, sums[2]);
    return { studentCe: sums[1] / n, kdLoss: this.o.teacher ? sums[0] / n : undefined, tokens: sums[2] };
  }

  /** The step's loss sums on this rank, read back once. */
  private async localSums(step: number, grads: Map<string, tf.Tensor>, stats: tf.Tensor[], count: number, started: number): Promise<StepGradients> {
    const local: StepLossSums = { loss: 0, kd: 0, ce: 0, tokens: 0 };
    try {
      for (const name of this.o.student.params.keys()) if (!grads.has(name)) grads.set(name, tf.zerosLike(this.o.student.params.get(name)!));
      // Only the last stage's first TP rank counts the losses, so that the all-reduce adds each micro-batch once.
      if (this.isLast && this.coords.tp === 0) {
        const values = await readScalars(stats);
        for (let i = 0; i < values.length; i += 3) {
          local.loss += values[i];
          local.kd! += values[i + 1];
          local.ce! += values[i + 2];
        }
        local.tokens = count;
      }
    } catch (e) {
      for (const g of grads.values()) g.dispose();
      throw e;
    } finally {
      for (const s of stats) s.dispose();
    }
    return { step, grads, sums: local, firstSample: this.firstSample, startedAt: started };
  }

  /**
   * Model parallelism's reduction: gradients summed where Megatron sums them, then one all-reduce over every
   * rank of the squared norm (each value once), the loss sums and the stop flag.
   */
  readonly reduction: GradientReduction = async (grads, local) => {
    const { layout, coll, rank } = this.o;
    const spec = this.o.student.spec;
    // 1. Sum over the ranks that saw other data (DP) or other positions (CP) of the same slices.
    const dpcp = groupOf(layout, rank, ['dp', 'cp']);
    if (dpcp.length > 1) await allReduceGradients(grads, (bucket) => coll.allReduceSum(dpcp, bucket), this.o.bucketBytes ?? DEFAULT_BUCKET_BYTES);
    // 2. A KV head replicated over several TP ranks: each rank's query heads contributed part of its gradient.
    const tpGroup = groupOf(layout, rank, ['tp']);
    for (const [name, p] of spec) {
      if (!p.gradientSum) continue;
      const peers = tpGroup.filter((r) => Math.floor(coordsOf(layout, r).tp / p.replicas) === Math.floor(this.coords.tp / p.replicas));
      await this.sumInto(grads, name, peers);
    }
    // 3. Tied embeddings on two stages: the embedding's and the head's gradients are one parameter's.
    const emb = embeddingName(this.o.student.config);
    if (layout.pp > 1 && this.o.student.config.tieWordEmbeddings && (this.coords.pp === 0 || this.isLast)) {
      await this.sumInto(grads, emb, [this.stageRank(0), this.stageRank(layout.pp - 1)]);
    }
    // 4. One all-reduce over every rank: the squared norm (each value once), the step's loss sums, the stop flag.
    const normT = tf.tidy(() => {
      let total = tf.scalar(0);
      for (const [name, g] of grads) if (spec.get(name)!.inNorm) total = tf.add(total, tf.sum(tf.square(g)));
      return total;
    });
    const sums = new Float32Array(6);
    sums[5] = this.o.stopRequested?.() ? 1 : 0;
    if (this.coords.cp === 0 && this.coords.dp === 0) sums[0] = (await normT.data())[0];
    normT.dispose();
    sums[1] = local.loss;
    sums[2] = local.kd ?? 0;
    sums[3] = local.ce ?? 0;
    sums[4] = local.tokens;
    await coll.allReduceSum(
      Array.from({ length: worldSize(layout) }, (_, r) => r),
      sums,
    );
    this.stopAgreed ||= sums[5] > 0;
    const teacher = this.o.teacher !== null && this.o.loss.kdRatio > 0;
    return {
      gradNorm: Math.sqrt(sums[0]),
      sums: {
        loss: sums[1],
        kd: teacher ? sums[2] : undefined,
        ce: this.o.loss.kdRatio < 1 || !teacher ? sums[3] : undefined,
        tokens: sums[4],
      },
    };
  };

  private async sumInto(grads: Map<string, tf.Tensor>, name: string, group: number[]): Promise<void> {
    if (group.length < 2) return;
    const g = grads.get(name)!;
    grads.set(name, await this.o.coll.allReduceTensor(group, g));
    g.dispose();
  }

  dispose(): void {
    this.studentStage.dispose();
    this.teacherStage?.dispose();
  }
}

/** The loss outputs of a step's micro-batches, in one readback. */
async function readScalars(stats: tf.Tensor[]): Promise<Float32Array> {
  if (!stats.length) return new Float32Array(0);
  const stacked = tf.stack(stats);
  const values = (await stacked.data()) as Float32Array;
  stacked.dispose();
  return values;
}
