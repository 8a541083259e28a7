/**
 * The distillation loss over a vocabulary split across the TP group, as ModelOpt's `LogitsKLLoss` computes it:
 * each rank forms only its [tokens, V / TP] slice of the student's and the teacher's logits; the row maxima are
 * all-reduced (max) and the softmax denominators (sum), so every rank holds exact log-probabilities of its slice,
 * and the per-token divergence is the all-reduced sum of the slices' terms. No rank ever holds [tokens, V].
 *
 * Every divergence here is a sum over the vocabulary of a term of (log p_t, log p_s), so the slices add up; its
 * gradient with respect to the scaled student logits is u − p_s·Σu (see divergences.ts), where Σu is all-reduced
 * too. The CE term (at τ = 1) needs the label's logit, which lives on one rank: the others contribute 0 to a sum.
 *
 * The vocabulary is padded to split evenly (vocabPadding.ts): a rank's columns past the model's own vocabulary are
 * not ids, so they are cut off before any max, sum or softmax and get a zero gradient. A teacher and a student whose
 * vocabularies differ (Qwen's 151,936 and 152,064 rows) compare the ids both have, [0, min(V_t, V_s)), each side
 * renormalised there, as one worker does (vocabAlignment.ts), while the CE keeps the student's whole vocabulary.
 *
 * The op's outputs: the micro-batch's share of the global loss, Σ mask·KD and Σ mask·CE (for the logs).
 */
import * as tf from '@tensorflow/tfjs-core';
import { divergenceFromLogProbs, logMixture } from '../../losses/divergences.ts';
import { kdScale } from '../../losses/mixing.ts';
import type { KdLossOptions } from '../../losses/types.ts';
import { sharedVocab } from '../../losses/vocabAlignment.ts';
import { ConfigError } from '../../errors.ts';
import type { Collectives } from './collectives.ts';
import type { Op } from './segmentTape.ts';
import { vocabShard, vocabShardOf, type VocabShard } from './vocabPadding.ts';

export interface VocabParallelLossOptions {
  /** The divergence; `log` (as klLoss's option) receives the vocabulary-alignment note once, on the first TP rank. */
  options: KdLossOptions & { log?: (line: string) => void };
  /** α: the weight of the KD term in (1 − α)·CE + α·KD (the recipe's kdRatio; `options.kdRatio` is not read). */
  kdRatio: number;
  coll: Collectives;
  tpGroup: number[];
  /**
   * The student's and the teacher's vocabulary shards on this rank (a rank's first id is its shard's `first`, not
   * V / TP × its place, once the vocabulary is padded). Default: what loadShardedModel recorded for the two head
   * slices (vocabShardOf); a slice it did not load is taken as unpadded.
   */
  vocab?: { student: VocabShard; teacher: VocabShard | null };
  /** The teacher's head slice [V / TP, h_t] (a constant), or null when pretraining. */
  teacherHead: tf.Tensor2D | null;
  /** Loss tokens in the whole global batch: each token's term is divided by it. */
  globalTokens: () => number;
}

interface Saved {
  logZs: tf.Tensor2D | null;
  logZt: tf.Tensor2D | null;
  logZ1: tf.Tensor2D | null;
  sumU: tf.Tensor2D | null;
}

/** Which of a rank's columns each term reads: always a prefix, since the padding is at the end of the vocabulary. */
interface Columns {
  first: number;
  rows: number;
  /** The student's own ids among them: the CE's softmax. */
  student: number;
  /** The ids both models have: the KD's two softmaxes. */
  shared: number;
  /** The CE's log-normaliser is the KD's (τ = 1 and the student has no id the teacher lacks, on every rank). */
  ceSharesLogZ: boolean;
  /** The vocabulary-alignment line, when the two vocabularies differ. */
  note: string | null;
}

/** u = p_s ⊙ ∂D/∂p_s for each kind (the gradient is u − p_s·Σu). */
function uOf(lpT: tf.Tensor2D, lpS: tf.Tensor2D, o: KdLossOptions): tf.Tensor2D {
  switch (o.kind) {
    case 'forward_kl':
      return tf.neg(tf.exp(lpT));
    case 'reverse_kl':
      return tf.mul(tf.exp(lpS), tf.add(tf.sub(lpS, lpT), 1));
    case 'skew_kl': {
      const logM = logMixture(lpT, lpS, o.skewLambda);
      return tf.neg(tf.exp(tf.sub(tf.add(tf.add(lpT, lpS), Math.log(1 - o.skewLambda)), logM))) as tf.Tensor2D;
    }
    case 'jsd': {
      const logM = logMixture(lpT, lpS, o.jsdBeta);
      return tf.mul(tf.mul(tf.exp(lpS), tf.sub(lpS, logM)), 1 - o.jsdBeta) as tf.Tensor2D;
    }
  }
}

/** The first `k` columns of `z`, or null when there are none (a rank holding only padding). */
function firstColumns(z: tf.Tensor2D, k: number): tf.Tensor2D | null {
  if (k === 0) return null;
  return k === z.shape[1] ? z : (tf.slice(z, [0, 0], [z.shape[0], k]) as tf.Tensor2D);
}

/** [n, k] → [n, rows], zeros after: a term's gradient over the rank's columns, none on the padding. */
function padColumns(g: tf.Tensor2D, rows: number): tf.Tensor2D {
  return g.shape[1] === rows
    ? g
    : (tf.pad(g, [
        [0, 0],
        [0, rows - g.shape[1]],
      ]) as tf.Tensor2D);
}

/** The label's logit if this rank holds the label among its `cols` columns (z: [n, cols]), else 0: [n, 1]. */
function labelLogit(z: tf.Tensor2D, labels: tf.Tensor, first: number, cols: number): tf.Tensor2D {
  return tf.sum(tf.mul(z, labelOneHot(labels, first, cols)), 1, true) as tf.Tensor2D;
}

/**
 * [n, cols]: 1 where the column is the row's label. By comparison with the column ids, so a label outside this
 * rank's columns matches none (and tf.oneHot's float32 output is all zeros on wasm).
 */
function labelOneHot(labels: tf.Tensor, first: number, cols: number): tf.Tensor2D {
  const local = tf.expandDims(tf.sub(labels, tf.scalar(first, 'int32')), 1);
  return tf.cast(tf.equal(local, tf.range(0, cols, 1, 'int32')), 'float32') as tf.Tensor2D;
}

/**
 * inputs: student hidden [N, h] (after f), teacher hidden [N, h_t] (or a [1, 1] placeholder when pretraining),
 * labels [N] int32, mask [N]; params: the student's head slice [V / TP, h].
 */
export function vocabParallelLossOp(
  names: { hidden: string; teacherHidden: string; labels: string; mask: string; head: string; outputs: [string, string, string] },
  o: VocabParallelLossOptions,
): Op {
  const saved = new WeakMap<tf.Tensor, Saved>();
  const tau = o.options.temperature;
  const kd = o.kdRatio > 0 && o.teacherHead !== null;
  const ce = o.kdRatio < 1;
  const g = o.tpGroup;
  const tpRank = g.indexOf(o.coll.rank);
  if (tpRank < 0) throw new RangeError(`vocabulary-parallel loss: worker ${o.coll.rank} is not in its TP group [${g.join(', ')}]`);
  const rowMax = (z: tf.Tensor2D): tf.Tensor2D => tf.max(z, 1, true) as tf.Tensor2D;
  let columns: Columns | null = null;
  let noted = false;

  const shardOf = (head: tf.Tensor, given: VocabShard | null | undefined): VocabShard => {
    const rows = head.shape[0];
    const s = given ?? vocabShardOf(head) ?? vocabShard(rows * g.length, rows * g.length, g.length, tpRank);
    if (s.rows !== rows || s.first !== tpRank * rows) {
      throw new ConfigError(
        `vocabulary-parallel loss: a head slice of ${rows} rows on TP rank ${tpRank} is recorded as rows [${s.first}, ${s.first + s.rows}) of ${s.paddedSize}; load it with loadShardedModel under this layout`,
      );
    }
    return s;
  };
  const columnsOf = (w: tf.Tensor): Columns => {
    if (columns) return columns;
    const s = shardOf(w, o.vocab?.student);
    const t = kd ? shardOf(o.teacherHead!, o.vocab?.teacher) : null;
    if (t && t.paddedSize !== s.paddedSize) {
      throw new ConfigError(
        `vocabulary-parallel loss: the teacher's vocabulary (${t.vocabSize}) is padded to ${t.paddedSize} rows and the student's (${s.vocabSize}) to ${s.paddedSize}, so the TP ranks hold different ids of each; load the two through loadShardedPair (shardedWeights.ts), which pads both to pairedVocabSize([${s.vocabSize}, ${t.vocabSize}], tp, --make_vocab_size_divisible_by)`,
      );
    }
    columns = {
      first: s.first,
      rows: s.rows,
      student: s.valid,
      shared: t ? Math.min(s.valid, t.valid) : 0,
      ceSharesLogZ: kd && tau === 1 && t !== null && s.vocabSize <= t.vocabSize,
      note: t ? sharedVocab(t.vocabSize, s.vocabSize).note : null,
    };
    return columns;
  };

  // log Σ exp over the whole vocabulary of each row, from the local slices (null: no column here): [N, 1].
  const logZ = async (zs: (tf.Tensor2D | null)[], n: number): Promise<tf.Tensor2D[]> => {
    const maxes = tf.tidy(() =>
      tf.concat(
        zs.map((z) => (z ? rowMax(z) : tf.fill([n, 1], -Infinity))),
        0,
      ),
    );
    const m = await o.coll.allReduceMax(g, Float32Array.from(await maxes.data<'float32'>()));
    maxes.dispose();
    const mT = tf.tensor2d(m, [zs.length * n, 1]);
    const sums = tf.tidy(() =>
      tf.concat(
        zs.map((z, i) => (z ? tf.sum(tf.exp(tf.sub(z, tf.slice(mT, [i * n, 0], [n, 1]))), 1, true) : tf.zeros([n, 1]))),
        0,
      ),
    );
    const total = await o.coll.allReduceTensor(g, sums);
    sums.dispose();
    const out = tf.tidy(() => zs.map((_, i) => tf.add(tf.slice(mT, [i * n, 0], [n, 1]), tf.log(tf.slice(total, [i * n, 0], [n, 1]))) as tf.Tensor2D));
    mT.dispose();
    total.dispose();
    return out;
  };

  const logits = (h: tf.Tensor, w: tf.Tensor): tf.Tensor2D => tf.matMul(h as tf.Tensor2D, w as tf.Tensor2D, false, true);

  return {
    label: 'vocabulary-parallel loss',
    inputs: [names.hidden, names.teacherHidden, names.labels, names.mask],
    outputs: names.outputs,
    params: [names.head],
    async forward([h, ht, labels, mask], [w]) {
      const cols = columnsOf(w);
      if (cols.note && !noted && tpRank === 0) o.options.log?.(cols.note);
      noted = true;
      const n = h.shape[0];
      const z = logits(h, w);
      // The shared columns at τ of each side, and the student's own columns at τ = 1 for the CE.
      const shared = (f: () => tf.Tensor2D): tf.Tensor2D | null =>
        kd && cols.shared > 0 ? tf.tidy(() => firstColumns(tf.div(f(), tau) as tf.Tensor2D, cols.shared)!) : null;
      const zs = shared(() => z);
      const zt = shared(() => logits(ht, o.teacherHead!));
      const z1 = ce && !cols.ceSharesLogZ ? firstColumns(z, cols.student) : null;
      const blocks = [...(kd ? [zs, zt] : []), ...(ce && !cols.ceSharesLogZ ? [z1] : [])];
      const zList = await logZ(blocks, n);
      const s: Saved = {
        logZs: kd ? zList[0] : null,
        logZt: kd ? zList[1] : null,
        logZ1: !ce ? null : cols.ceSharesLogZ ? tf.clone(zList[0]) : zList[zList.length - 1],
        sumU: null,
      };
      const partials: tf.Tensor[] = [];
      if (kd) {
        partials.push(
          ...tf.tidy(() => {
            if (!zs || !zt) return [tf.zeros([n, 1]), tf.zeros([n, 1])];
            const lpS = tf.sub(zs, s.logZs!) as tf.Tensor2D;
            const lpT = tf.sub(zt, s.logZt!) as tf.Tensor2D;
            return [tf.reshape(divergenceFromLogProbs(lpT, lpS, o.options), [n, 1]), tf.sum(uOf(lpT, lpS, o.options), 1, true)];
          }),
        );
      }
      if (ce)
        partials.push(tf.tidy(() => (cols.student > 0 ? labelLogit(firstColumns(z, cols.student)!, labels, cols.first, cols.student) : tf.zeros([n, 1]))));
      const stacked = tf.concat(partials, 1);
      for (const p of partials) p.dispose();
      const summed = await o.coll.allReduceTensor(g, stacked);
      stacked.dispose();
      for (const t of new Set([zs, zt, z1, z])) if (t && t !== z) t.dispose();
      z.dispose();
      const out = tf.tidy(() => {
        let col = 0;
        const take = (): tf.Tensor2D => tf.slice(summed, [0, col++], [n, 1]) as tf.Tensor2D;
        const m = tf.reshape(mask, [n, 1]);
        const dRow = kd ? take() : null;
        if (kd) s.sumU = tf.keep(take());
        const ceRow = ce ? tf.sub(s.logZ1!, take()) : null;
        const kdSum = dRow ? tf.sum(tf.mul(dRow, m)) : tf.scalar(0);
        const ceSum = ceRow ? tf.sum(tf.mul(ceRow, m)) : tf.scalar(0);
        const G = o.globalTokens();
        const total = G > 0 ? tf.div(tf.add(tf.mul(kdSum, o.kdRatio * kdScale(o.options)), tf.mul(ceSum, 1 - o.kdRatio)), G) : tf.scalar(0);
        return [total, kdSum, ceSum];
      });
      summed.dispose();
      saved.set(h, s);
      return out;
    },
    async backward([h, ht, labels, mask], [w], [dTotal]) {
      const s = saved.get(h);
      if (!s) throw new Error('vocabulary-parallel loss: backward before forward');
      saved.delete(h);
      const cols = columnsOf(w);
      const G = o.globalTokens();
      const result = tf.tidy(() => {
        const n = h.shape[0];
        const z = logits(h, w);
        // Per-row weight: dL/d(term of row) = dTotal · mask / G.
        const rowW = tf.reshape(tf.mul(mask, G > 0 ? tf.div(dTotal ?? tf.scalar(0), G) : 0), [n, 1]);
        let dz: tf.Tensor2D = tf.zerosLike(z);
        if (kd && cols.shared > 0) {
          const lpS = tf.sub(firstColumns(tf.div(z, tau) as tf.Tensor2D, cols.shared)!, s.logZs!) as tf.Tensor2D;
          const lpT = tf.sub(firstColumns(tf.div(logits(ht, o.teacherHead!), tau) as tf.Tensor2D, cols.shared)!, s.logZt!) as tf.Tensor2D;
          const gradS = tf.sub(uOf(lpT, lpS, o.options), tf.mul(tf.exp(lpS), s.sumU!)) as tf.Tensor2D;
          dz = tf.add(dz, padColumns(tf.mul(gradS, (o.kdRatio * kdScale(o.options)) / tau) as tf.Tensor2D, cols.rows)) as tf.Tensor2D;
        }
        if (ce && cols.student > 0) {
          const z1 = firstColumns(z, cols.student)!;
          const dCe = tf.sub(tf.exp(tf.sub(z1, s.logZ1!)), labelOneHot(labels, cols.first, cols.student));
          dz = tf.add(dz, padColumns(tf.mul(dCe, 1 - o.kdRatio) as tf.Tensor2D, cols.rows)) as tf.Tensor2D;
        }
        dz = tf.mul(dz, rowW) as tf.Tensor2D;
        return { dh: tf.matMul(dz, w as tf.Tensor2D), dw: tf.matMul(dz, h as tf.Tensor2D, true, false) };
      });
      for (const t of [s.logZs, s.logZt, s.logZ1, s.sumU]) t?.dispose();
      return { dInputs: [result.dh, null, null, null], dParams: [result.dw] };
    },
  };
}
