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
 * The op's outputs: the micro-batch's share of the global loss, Σ mask·KD and Σ mask·CE (for the logs).
 */
import * as tf from '@tensorflow/tfjs-core';
import { divergenceFromLogProbs, logMixture } from '../../losses/divergences.ts';
import { kdScale } from '../../losses/mixing.ts';
import type { KdLossOptions } from '../../losses/types.ts';
import type { Collectives } from './collectives.ts';
import type { Op } from './segmentTape.ts';

export interface VocabParallelLossOptions {
  options: KdLossOptions;
  /** α: weight of the KD term. */
  alpha: number;
  coll: Collectives;
  tpGroup: number[];
  /** This rank's first vocabulary row. */
  vocabStart: number;
  /** The teacher's head slice [V / TP, h_t] (a constant), or null when pretraining. */
  teacherHead: tf.Tensor2D | null;
  /** Loss tokens in the whole global batch: each token's term is divided by it. */
  globalTokens: () => number;
}

interface Saved {
  logZs: tf.Tensor2D;
  logZt: tf.Tensor2D | null;
  logZ1: tf.Tensor2D | null;
  sumU: tf.Tensor2D | null;
}

/** u = p_s ⊙ ∂D/∂p_s for each kind (the gradient is u − p_s·Σu). */
function uOf(lpT: tf.Tensor2D, lpS: tf.Tensor2D, o: KdLossOptions): tf.Tensor2D {
  switch (o.kind) {
    case 'forward_kl': return tf.neg(tf.exp(lpT));
    case 'reverse_kl': return tf.mul(tf.exp(lpS), tf.add(tf.sub(lpS, lpT), 1));
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

/**
 * inputs: student hidden [N, h] (after f), teacher hidden [N, h_t] (or a [1, 1] placeholder when pretraining),
 * labels [N] int32, mask [N]; params: the student's head slice [V / TP, h].
 */
export function vocabParallelLossOp(names: { hidden: string; teacherHidden: string; labels: string; mask: string; head: string; outputs: [string, string, string] }, o: VocabParallelLossOptions): Op {
  const saved = new WeakMap<tf.Tensor, Saved>();
  const tau = o.options.temperature;
  const kd = o.alpha > 0 && o.teacherHead !== null;
  const ce = o.alpha < 1;
  const g = o.tpGroup;
  const rowMax = (z: tf.Tensor2D): tf.Tensor2D => tf.max(z, 1, true) as tf.Tensor2D;

  // log Σ exp over the whole vocabulary of each row, from the local slices: [N, 1].
  const logZ = async (zs: tf.Tensor2D[]): Promise<tf.Tensor2D[]> => {
    const n = zs[0].shape[0];
    const maxes = tf.tidy(() => tf.concat(zs.map(rowMax), 0));
    const m = await o.coll.allReduceMax(g, Float32Array.from(await maxes.data<'float32'>()));
    maxes.dispose();
    const mT = tf.tensor2d(m, [zs.length * n, 1]);
    const sums = tf.tidy(() => tf.concat(zs.map((z, i) => tf.sum(tf.exp(tf.sub(z, tf.slice(mT, [i * n, 0], [n, 1]))), 1, true)), 0));
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
      const n = h.shape[0];
      const vl = w.shape[0];
      const z = logits(h, w);
      const zs = tf.div(z, tau) as tf.Tensor2D;
      const zt = kd ? tf.tidy(() => tf.div(logits(ht, o.teacherHead!), tau) as tf.Tensor2D) : null;
      const rows = [zs, ...(zt ? [zt] : []), ...(ce && tau !== 1 ? [z] : [])];
      const zsList = await logZ(rows);
      const s: Saved = { logZs: zsList[0], logZt: zt ? zsList[1] : null, logZ1: ce ? (tau !== 1 ? zsList[zsList.length - 1] : tf.clone(zsList[0])) : null, sumU: null };
      const partials: tf.Tensor[] = [];
      if (kd) {
        const [d, u] = tf.tidy(() => {
          const lpS = tf.sub(zs, s.logZs) as tf.Tensor2D;
          const lpT = tf.sub(zt!, s.logZt!) as tf.Tensor2D;
          return [tf.reshape(divergenceFromLogProbs(lpT, lpS, o.options), [n, 1]), tf.sum(uOf(lpT, lpS, o.options), 1, true)];
        });
        partials.push(d, u);
      }
      if (ce) {
        // The label's logit if this rank holds its row, else 0.
        partials.push(tf.tidy(() => {
          const local = tf.sub(labels, tf.scalar(o.vocabStart, 'int32'));
          const inside = tf.logicalAnd(tf.greaterEqual(local, 0), tf.less(local, vl));
          const onehot = tf.mul(tf.oneHot(tf.where(inside, local, tf.zerosLike(local)) as tf.Tensor1D, vl), tf.expandDims(tf.cast(inside, 'float32'), 1));
          return tf.sum(tf.mul(z, onehot), 1, true);
        }));
      }
      const stacked = tf.concat(partials, 1);
      for (const p of partials) p.dispose();
      const summed = await o.coll.allReduceTensor(g, stacked);
      stacked.dispose();
      zs.dispose();
      zt?.dispose();
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
        const total = G > 0 ? tf.div(tf.add(tf.mul(kdSum, o.alpha * kdScale(o.options)), tf.mul(ceSum, 1 - o.alpha)), G) : tf.scalar(0);
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
      const G = o.globalTokens();
      const result = tf.tidy(() => {
        const n = h.shape[0];
        const vl = w.shape[0];
        const z = logits(h, w);
        // Per-row weight: dL/d(term of row) = dTotal · mask / G.
        const rowW = tf.reshape(tf.mul(mask, G > 0 ? tf.div(dTotal ?? tf.scalar(0), G) : 0), [n, 1]);
        let dz: tf.Tensor2D = tf.zerosLike(z);
        if (kd) {
          const lpS = tf.sub(tf.div(z, tau), s.logZs) as tf.Tensor2D;
          const lpT = tf.sub(tf.div(logits(ht, o.teacherHead!), tau), s.logZt!) as tf.Tensor2D;
          const gradS = tf.sub(uOf(lpT, lpS, o.options), tf.mul(tf.exp(lpS), s.sumU!));
          dz = tf.add(dz, tf.mul(gradS, o.alpha * kdScale(o.options) / tau)) as tf.Tensor2D;
        }
        if (ce) {
          const local = tf.sub(labels, tf.scalar(o.vocabStart, 'int32'));
          const inside = tf.logicalAnd(tf.greaterEqual(local, 0), tf.less(local, vl));
          const onehot = tf.mul(tf.oneHot(tf.where(inside, local, tf.zerosLike(local)) as tf.Tensor1D, vl), tf.expandDims(tf.cast(inside, 'float32'), 1));
          dz = tf.add(dz, tf.mul(tf.sub(tf.exp(tf.sub(z, s.logZ1!)), onehot), 1 - o.alpha)) as tf.Tensor2D;
        }
        dz = tf.mul(dz, rowW) as tf.Tensor2D;
        return { dh: tf.matMul(dz, w as tf.Tensor2D), dw: tf.matMul(dz, h as tf.Tensor2D, true, false) };
      });
      for (const t of [s.logZs, s.logZt, s.logZ1, s.sumU]) t?.dispose();
      return { dInputs: [result.dh, null, null, null], dParams: [result.dw] };
    },
  };
}
