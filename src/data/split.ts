/**
 * `--split "99,1,0"`: train/valid/test by contiguous document ranges, as Megatron's get_split_indices does, so the
 * same data gives the same split in both tools and documents never leak between splits.
 */
import { ConfigError } from '../errors.ts';

export type SplitName = 'train' | 'valid' | 'test';
export const SPLIT_NAMES: readonly SplitName[] = ['train', 'valid', 'test'];

/** Parses "99,1,0" (or "99/1/0", or fewer parts, padded with 0) into normalised weights. */
export function parseSplit(s: string): [number, number, number] {
  const parts = s.split(/[,/]/).map((p) => p.trim()).filter((p) => p !== '');
  if (parts.length === 0 || parts.length > 3) throw new ConfigError(`--split ${JSON.stringify(s)}: expected up to three numbers, e.g. "99,1,0"`);
  const w = parts.map((p) => {
    const n = Number(p);
    if (!Number.isFinite(n) || n < 0) throw new ConfigError(`--split ${JSON.stringify(s)}: "${p}" is not a non-negative number`);
    return n;
  });
  while (w.length < 3) w.push(0);
  const sum = w[0] + w[1] + w[2];
  if (sum <= 0) throw new ConfigError(`--split ${JSON.stringify(s)}: the parts sum to 0; give at least one positive part`);
  return [w[0] / sum, w[1] / sum, w[2] / sum];
}

/** Document ranges [start, end) of each split, Megatron's rounding: boundaries round(cumulative * n), shifted to end at n. */
export function splitRanges(numDocuments: number, weights: readonly number[]): Record<SplitName, [number, number]> {
  const idx = [0];
  weights.forEach((w, k) => idx.push(idx[k] + roundHalfEven(w * numDocuments)));
  const diff = idx[idx.length - 1] - numDocuments;
  for (let k = 1; k < idx.length; k++) idx[k] -= diff;
  return { train: [idx[0], idx[1]], valid: [idx[1], idx[2]], test: [idx[2], idx[3]] };
}

/** Python 3's round(): halves go to the even neighbour (Megatron computes the boundaries in Python). */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}
