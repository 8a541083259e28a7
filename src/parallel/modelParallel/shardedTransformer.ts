/**
 * One pipeline stage of a GPT-2 or Llama model on one tensor/context-parallel rank, as a list of ops
 * (segmentTape.ts). Megatron's layer, per rank:
 *
 *   x = norm(h) → f → column-parallel q, k, v (this rank's heads) → [CP: gather K, V] → attention → row-parallel
 *   o_proj (a partial sum) → g → h + o → norm → f → column-parallel gate/up → row-parallel down → g → residual
 *
 * where f is identity forward / all-reduce backward and g all-reduce forward / identity backward over the TP
 * group. The embedding is vocabulary-parallel (each rank looks up the ids in its rows of the padded vocabulary,
 * g sums; no id reaches a padding row). Under context
 * parallelism a rank holds some positions of the sequence (sequenceSplit.ts); RoPE, GPT-2's position table and
 * the causal mask use the global positions, and the gathered K/V's gradient is summed back to its owners.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/config.ts';
import { activate, gatedActivation } from '../../model/activations.ts';
import { causalAttention, describeCausalMask, mergeHeads, splitHeads } from '../../model/attention.ts';
import { conv1d, linear } from '../../model/linear.ts';
import { layerNorm, rmsNorm } from '../../model/norms.ts';
import { applyRope, RopeCache, ropeInvFreq, type RopeTables } from '../../model/rope.ts';
import { groupOf, stagePlan, type ParallelLayout, type RankCoords, type StagePlan } from '../layout.ts';
import type { Collectives } from './collectives.ts';
import { collectiveOp, computeOp, type Op } from './segmentTape.ts';
import { embeddingName } from './shardSpec.ts';
import { sequenceSplit, type SequenceSplit } from './sequenceSplit.ts';

const MASKED = -1e9;

export interface StageOptions {
  config: ModelConfig;
  layout: ParallelLayout;
  rank: number;
  coords: RankCoords;
  coll: Collectives;
  /** Prefix of this model's activation names ('s.' student, 't.' teacher), so two models share a tape's namespace. */
  prefix: string;
  /** The parameters this rank holds (which optional biases exist). */
  paramNames: ReadonlySet<string>;
}

export class ShardedStage {
  readonly plan: StagePlan;
  private readonly tpGroup: number[];
  private readonly cpGroup: number[];
  private readonly rope: RopeCache | null;
  private readonly cache = new Map<string, { ops: Op[]; consts: tf.Tensor[] }>();

  constructor(private readonly o: StageOptions) {
    this.plan = stagePlan(o.config.numLayers, o.layout.pp, o.coords.pp);
    this.tpGroup = groupOf(o.layout, o.rank, ['tp']);
    this.cpGroup = groupOf(o.layout, o.rank, ['cp']);
    const c = o.config;
    this.rope = c.modelType === 'gpt2' ? null : new RopeCache(ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling), c.headDim);
  }

  /** The activation this stage starts from: the ids on the first stage, the residual stream elsewhere. */
  get inputName(): string {
    return this.plan.hasEmbedding ? 'ids' : this.h(this.plan.firstLayer);
  }

  /** The final hidden states (after the last norm) on the last stage, the residual stream elsewhere. */
  get outputName(): string {
    return this.plan.hasHead ? `${this.o.prefix}hidden` : this.h(this.plan.endLayer);
  }

  /** What the loss reads: the final hidden states, behind f when the head is split over the TP group. */
  get lossInputName(): string {
    return this.o.layout.tp > 1 ? `${this.o.prefix}hiddenF` : `${this.o.prefix}hidden`;
  }

  private h(layer: number): string {
    return `${this.o.prefix}h${layer}`;
  }

  /** The residual stream a stage hands the next (and gets its gradient back in): [batch × this rank's positions, hidden]. */
  residualShape(batch: number, seqLength: number): number[] {
    return [batch * this.split(seqLength).local.length, this.o.config.hiddenSize];
  }

  split(seqLength: number): SequenceSplit {
    return sequenceSplit(seqLength, this.o.layout.cp, this.o.coords.cp);
  }

  /** The stage's ops for micro-batches of `batch` rows of `seqLength` tokens (built once per shape). */
  ops(batch: number, seqLength: number): Op[] {
    const key = `${batch}x${seqLength}`;
    let e = this.cache.get(key);
    if (!e) {
      e = { ops: [], consts: [] };
      this.build(e, batch, this.split(seqLength));
      this.cache.set(key, e);
    }
    return e.ops;
  }

  dispose(): void {
    for (const e of this.cache.values()) for (const t of e.consts) t.dispose();
    this.cache.clear();
    this.rope?.dispose();
  }

  // f: identity forward, all-reduce of the gradient over the TP group backward.
  private f(ops: Op[], from: string, to: string): void {
    const g = this.tpGroup;
    ops.push(
      collectiveOp(
        `f ${to}`,
        from,
        to,
        async (x) => tf.clone(x),
        (dy) => this.o.coll.allReduceTensor(g, dy),
      ),
    );
  }

  // g: all-reduce over the TP group forward, identity backward.
  private g(ops: Op[], from: string, to: string): void {
    const g = this.tpGroup;
    ops.push(
      collectiveOp(
        `g ${to}`,
        from,
        to,
        (x) => this.o.coll.allReduceTensor(g, x),
        async (dy) => tf.clone(dy),
      ),
    );
  }

  private build(e: { ops: Op[]; consts: tf.Tensor[] }, b: number, s: SequenceSplit): void {
    const c = this.o.config;
    const tp = this.o.layout.tp;
    const pre = this.o.prefix;
    const ops = e.ops;
    const keep = <T extends tf.Tensor>(t: T): T => {
      e.consts.push(t);
      return tf.keep(t);
    };
    const tl = s.local.length;
    // Mask [local positions, gathered keys]: visible where the key's position is not after the query's.
    const mask = keep(
      tf.tensor2d(
        Float32Array.from(s.local.flatMap((q) => s.keys.map((k) => (k <= q && (c.slidingWindow === null || q - k < c.slidingWindow) ? 0 : MASKED)))),
        [tl, s.keys.length],
      ),
    );
    const pos = keep(tf.tensor1d(Int32Array.from(s.local), 'int32'));
    // Webgpu's fused softmax computes this mask from the positions: row and column indices when this rank holds
    // the whole sequence in order, else the global positions of its queries and of the gathered keys.
    const inOrder = s.keys.every((p, j) => p === j) && s.local.every((p, j) => p === j) && tl === s.keys.length;
    const positions = inOrder ? undefined : { query: pos, key: keep(tf.tensor1d(Int32Array.from(s.keys), 'int32')) };
    describeCausalMask(mask, { slidingWindow: c.slidingWindow, positions });
    let rope: RopeTables | null = null;
    if (this.rope) {
      const full = this.rope.get(s.seqLength);
      rope = { cos: keep(tf.gather(full.cos, pos)), sinSigned: keep(tf.gather(full.sinSigned, pos)) };
    }
    const gpt2 = c.modelType === 'gpt2';
    if (this.plan.hasEmbedding) {
      const emb = embeddingName(c);
      const partial = tp > 1 ? `${pre}embPartial` : gpt2 ? `${pre}tok` : this.h(0);
      ops.push(
        computeOp('embedding', { inputs: ['ids'], outputs: [partial], params: [emb], differentiable: [false] }, ([ids], [w]) => {
          const flat = tf.reshape(ids, [-1]);
          if (tp === 1) return [tf.gather(w, flat)];
          // Vocabulary-parallel: ids outside this rank's rows look up row 0 and are zeroed; g sums the ranks. Every
          // rank holds the same number of rows of the padded vocabulary (vocabPadding.ts), so its first id follows.
          const rows = w.shape[0];
          const first = this.o.coords.tp * rows;
          const local = tf.sub(flat, tf.scalar(first, 'int32'));
          const inside = tf.logicalAnd(tf.greaterEqual(local, 0), tf.less(local, rows));
          const rowsOf = tf.where(inside, local, tf.zerosLike(local));
          return [tf.mul(tf.gather(w, rowsOf), tf.expandDims(tf.cast(inside, 'float32'), 1))];
        }),
      );
      if (tp > 1) this.g(ops, partial, gpt2 ? `${pre}tok` : this.h(0));
      if (gpt2) {
        ops.push(
          computeOp('position embedding', { inputs: [`${pre}tok`], outputs: [this.h(0)], params: ['transformer.wpe.weight'] }, ([tok], [wpe]) => {
            const p = tf.gather(wpe, pos);
            return [tf.reshape(tf.add(tf.reshape(tok, [b, tl, c.hiddenSize]), p), [b * tl, c.hiddenSize])];
          }),
        );
      }
    }
    for (let i = this.plan.firstLayer; i < this.plan.endLayer; i++) this.layer(ops, i, b, s, mask, rope);
    if (this.plan.hasHead) {
      const last = this.h(this.plan.endLayer);
      const names = gpt2 ? ['transformer.ln_f.weight', 'transformer.ln_f.bias'] : ['model.norm.weight'];
      ops.push(
        computeOp('final norm', { inputs: [last], outputs: [`${pre}hidden`], params: names }, ([x], [w, bias]) => [
          gpt2 ? layerNorm(x, w as tf.Tensor1D, bias as tf.Tensor1D, c.normEps) : rmsNorm(x, w as tf.Tensor1D, c.normEps),
        ]),
      );
      // The head is column-parallel over the vocabulary: each rank's slice of the loss gives a partial gradient.
      if (tp > 1) this.f(ops, `${pre}hidden`, `${pre}hiddenF`);
    }
  }

  private layer(ops: Op[], i: number, b: number, s: SequenceSplit, mask: tf.Tensor2D, rope: RopeTables | null): void {
    const c = this.o.config;
    const { tp, cp } = this.o.layout;
    const gpt2 = c.modelType === 'gpt2';
    const P = gpt2 ? `transformer.h.${i}.` : `model.layers.${i}.`;
    const a = (n: string): string => `${this.o.prefix}l${i}.${n}`;
    const tl = s.local.length;
    const heads = c.numHeads / tp;
    const kvHeads = gpt2 ? heads : c.numKvHeads % tp === 0 ? c.numKvHeads / tp : 1;
    const hd = c.headDim;
    const norm = (x: tf.Tensor, ps: tf.Tensor[]): tf.Tensor =>
      gpt2 ? layerNorm(x, ps[0] as tf.Tensor1D, ps[1] as tf.Tensor1D, c.normEps) : rmsNorm(x, ps[0] as tf.Tensor1D, c.normEps);
    const normParams = (n: string): string[] => (gpt2 ? [`${P}${n}.weight`, `${P}${n}.bias`] : [`${P}${n}.weight`]);
    const has = (n: string): boolean => this.hasParam(n);

    // Attention.
    ops.push(
      computeOp(`layer ${i} norm 1`, { inputs: [this.h(i)], outputs: [a('x')], params: normParams(gpt2 ? 'ln_1' : 'input_layernorm') }, ([x], ps) => [
        norm(x, ps),
      ]),
    );
    const x = tp > 1 ? a('xf') : a('x');
    if (tp > 1) this.f(ops, a('x'), x);
    const qkvParams = gpt2
      ? [`${P}attn.c_attn.weight`, `${P}attn.c_attn.bias`]
      : ['q', 'k', 'v'].flatMap((n) => [`${P}self_attn.${n}_proj.weight`, ...(has(`${P}self_attn.${n}_proj.bias`) ? [`${P}self_attn.${n}_proj.bias`] : [])]);
    ops.push(
      computeOp(`layer ${i} qkv`, { inputs: [x], outputs: [a('q'), a('k'), a('v')], params: qkvParams }, ([xx], ps) => {
        if (gpt2) {
          const [q, k, v] = tf.split(conv1d(xx as tf.Tensor2D, ps[0] as tf.Tensor2D, ps[1] as tf.Tensor1D), 3, 1) as tf.Tensor2D[];
          return [q, k, v].map((y) => splitHeads(y, b, tl, heads, hd));
        }
        let k = 0;
        const proj = (name: string, n: number): tf.Tensor4D => {
          const w = ps[k++] as tf.Tensor2D;
          const bias = has(`${P}self_attn.${name}_proj.bias`) ? (ps[k++] as tf.Tensor1D) : undefined;
          return splitHeads(linear(xx as tf.Tensor2D, w, bias), b, tl, n, hd);
        };
        const q = applyRope(proj('q', heads), rope!);
        const kk = applyRope(proj('k', kvHeads), rope!);
        return [q, kk, proj('v', kvHeads)];
      }),
    );
    let kName = a('k');
    let vName = a('v');
    if (cp > 1) {
      kName = this.gatherKv(ops, a('k'), a('kAll'), b, kvHeads, s);
      vName = this.gatherKv(ops, a('v'), a('vAll'), b, kvHeads, s);
    }
    let scale = 1 / Math.sqrt(hd);
    if (gpt2 && c.scaleAttnByInverseLayerIdx) scale /= i + 1;
    const oW = gpt2 ? `${P}attn.c_proj.weight` : `${P}self_attn.o_proj.weight`;
    const oOut = tp > 1 ? a('oPartial') : a('o');
    ops.push(
      computeOp(`layer ${i} attention`, { inputs: [a('q'), kName, vName], outputs: [oOut], params: [oW] }, ([q, k, v], [w]) => {
        const att = mergeHeads(causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, mask, scale));
        return [gpt2 ? tf.matMul(att, w as tf.Tensor2D) : tf.matMul(att, w as tf.Tensor2D, false, true)];
      }),
    );
    if (tp > 1) this.g(ops, oOut, a('o'));
    const oBias = gpt2 ? `${P}attn.c_proj.bias` : `${P}self_attn.o_proj.bias`;
    this.residual(ops, `layer ${i} residual 1`, this.h(i), a('o'), a('h1'), has(oBias) ? oBias : null);

    // MLP.
    ops.push(
      computeOp(`layer ${i} norm 2`, { inputs: [a('h1')], outputs: [a('x2')], params: normParams(gpt2 ? 'ln_2' : 'post_attention_layernorm') }, ([y], ps) => [
        norm(y, ps),
      ]),
    );
    const x2 = tp > 1 ? a('x2f') : a('x2');
    if (tp > 1) this.f(ops, a('x2'), x2);
    const mOut = tp > 1 ? a('mPartial') : a('m');
    const mlpParams = gpt2
      ? [`${P}mlp.c_fc.weight`, `${P}mlp.c_fc.bias`, `${P}mlp.c_proj.weight`]
      : ['gate', 'up']
          .flatMap((n) => [`${P}mlp.${n}_proj.weight`, ...(has(`${P}mlp.${n}_proj.bias`) ? [`${P}mlp.${n}_proj.bias`] : [])])
          .concat(`${P}mlp.down_proj.weight`);
    ops.push(
      computeOp(`layer ${i} mlp`, { inputs: [x2], outputs: [mOut], params: mlpParams }, ([xx], ps) => {
        if (gpt2) return [tf.matMul(activate(c.activation, conv1d(xx as tf.Tensor2D, ps[0] as tf.Tensor2D, ps[1] as tf.Tensor1D)), ps[2] as tf.Tensor2D)];
        let k = 0;
        const proj = (name: string): tf.Tensor2D => {
          const w = ps[k++] as tf.Tensor2D;
          const bias = has(`${P}mlp.${name}_proj.bias`) ? (ps[k++] as tf.Tensor1D) : undefined;
          return linear(xx as tf.Tensor2D, w, bias);
        };
        const gate = proj('gate'); // before up: proj advances k
        const up = proj('up');
        return [tf.matMul(gatedActivation(c.activation, gate, up), ps[k] as tf.Tensor2D, false, true)];
      }),
    );
    if (tp > 1) this.g(ops, mOut, a('m'));
    const downBias = gpt2 ? `${P}mlp.c_proj.bias` : `${P}mlp.down_proj.bias`;
    this.residual(ops, `layer ${i} residual 2`, a('h1'), a('m'), this.h(i + 1), has(downBias) ? downBias : null);
  }

  /** h + y (+ the row-parallel layer's bias, added once, after the all-reduce). */
  private residual(ops: Op[], label: string, h: string, y: string, out: string, bias: string | null): void {
    ops.push(
      computeOp(label, { inputs: [h, y], outputs: [out], params: bias ? [bias] : [] }, ([hh, yy], ps) => [
        ps.length ? tf.add(tf.add(hh, yy), ps[0]) : tf.add(hh, yy),
      ]),
    );
  }

  /** CP: every rank's K (or V) [b, kv, local, hd] gathered along the sequence; the backward sums the gradient back to its owner. */
  private gatherKv(ops: Op[], from: string, to: string, b: number, kv: number, s: SequenceSplit): string {
    const hd = this.o.config.headDim;
    const group = this.cpGroup;
    const per = s.lengths.map((n) => b * kv * n * hd);
    ops.push(
      collectiveOp(
        `gather ${to}`,
        from,
        to,
        async (x) => {
          const all = await this.o.coll.allGather(group, Float32Array.from(await x.data<'float32'>()), per);
          return tf.tidy(() => {
            let at = 0;
            const parts = s.lengths.map((n, r) => {
              const t = tf.tensor4d(all.subarray(at, at + per[r]), [b, kv, n, hd]);
              at += per[r];
              return t;
            });
            return tf.concat(parts, 2);
          });
        },
        async (dy) => {
          const summed = await this.o.coll.allReduceTensor(group, dy);
          const mine = tf.slice(summed, [0, 0, s.offset, 0], [b, kv, s.local.length, hd]);
          summed.dispose();
          return mine;
        },
      ),
    );
    return to;
  }

  private hasParam(name: string): boolean {
    return this.o.paramNames.has(name);
  }
}
