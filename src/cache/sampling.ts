/**
 * Random-sampling KD targets ("Sparse Logit Sampling", 2025): N draws with replacement from the teacher's p_t at one
 * position, kept as the distinct ids and their counts. With c the counts, Σ (c/N)·(log p_t − log p_s) is an unbiased
 * estimate of KL(p_t ‖ p_s) (sparseTargets.ts, `sampled`).
 *
 * The draws at (sample i, position j) come from a PRNG seeded by (seed, i, j) alone, so a row does not depend on
 * which machine, shard, part or micro-batch computed it: sharded and unsharded caches hold the same rows.
 */
import { mixSeed, mulberry32 } from '../data/prng.ts';

export interface DrawnRow {
  /** Distinct ids in increasing order. */
  ids: number[];
  counts: number[];
}

/** The seed of the draws at one token position. */
export function positionSeed(seed: number, sample: number, position: number): number {
  return mixSeed(seed, sample, position);
}

/**
 * N draws from softmax(logProbs) (the row need not be exactly normalised: it is normalised here in float64).
 * Inverse-CDF sampling with sorted uniforms: one pass over the vocabulary, O(V + N log N).
 */
export function drawRow(logProbs: ArrayLike<number>, draws: number, seed: number): DrawnRow {
  const v = logProbs.length;
  let max = -Infinity;
  for (let i = 0; i < v; i++) max = Math.max(max, logProbs[i]);
  let total = 0;
  for (let i = 0; i < v; i++) total += Math.exp(logProbs[i] - max);
  const rnd = mulberry32(seed);
  const u = new Float64Array(draws);
  for (let k = 0; k < draws; k++) u[k] = rnd() * total;
  u.sort();
  const ids: number[] = [];
  const counts: number[] = [];
  let cum = 0;
  let k = 0;
  for (let i = 0; i < v && k < draws; i++) {
    cum += Math.exp(logProbs[i] - max);
    let c = 0;
    while (k < draws && u[k] < cum) {
      c++;
      k++;
    }
    if (c > 0) {
      ids.push(i);
      counts.push(c);
    }
  }
  // Rounding can leave the last uniforms just above the running sum: they belong to the last id with mass.
  if (k < draws) {
    let last = v - 1;
    while (last > 0 && !(logProbs[last] > -Infinity)) last--;
    if (ids.length > 0 && ids[ids.length - 1] === last) counts[counts.length - 1] += draws - k;
    else {
      ids.push(last);
      counts.push(draws - k);
    }
  }
  return { ids, counts };
}
