/**
 * `--data_paths "w1 prefix1 w2 prefix2"` and Megatron's greedy blending rule (helpers.cpp build_blending_indices):
 * with weights normalised to sum 1, sample i comes from the dataset d that maximises w_d * max(i, 1) - count_d
 * (count_d: samples already taken from d; ties go to the lowest d, as the C++ compares with a strict >), and is that
 * dataset's sample number count_d.
 */
import { ConfigError } from '../errors.ts';

export interface WeightedPath {
  weight: number;
  path: string;
}

/** Parses "w1 p1 w2 p2" or a bare "p1 p2" (equal weights). Weights are returned normalised to sum 1. */
export function parseDataPaths(spec: string | readonly string[]): WeightedPath[] {
  const tokens = (typeof spec === 'string' ? spec.split(/\s+/) : spec.flatMap((s) => s.split(/\s+/))).filter((t) => t !== '');
  if (tokens.length === 0) throw new ConfigError('--data_paths is empty: give "PREFIX" or "W1 PREFIX1 W2 PREFIX2"');
  const isNum = (t: string): boolean => t.trim() !== '' && Number.isFinite(Number(t));
  let pairs: WeightedPath[];
  if (!tokens.some(isNum)) {
    pairs = tokens.map((path) => ({ weight: 1, path }));
  } else {
    if (tokens.length % 2 !== 0) {
      throw new ConfigError(`--data_paths ${JSON.stringify(tokens.join(' '))}: weighted form needs pairs "WEIGHT PREFIX", got ${tokens.length} words`);
    }
    pairs = [];
    for (let k = 0; k < tokens.length; k += 2) {
      if (!isNum(tokens[k])) {
        throw new ConfigError(`--data_paths: weight "${tokens[k]}" (word ${k + 1}, before ${tokens[k + 1]}) is not a number. Use "W1 PREFIX1 W2 PREFIX2" or a bare list of prefixes`);
      }
      pairs.push({ weight: Number(tokens[k]), path: tokens[k + 1] });
    }
  }
  for (const p of pairs) {
    if (!(p.weight > 0)) throw new ConfigError(`--data_paths: weight ${p.weight} of ${p.path} must be positive (drop the dataset instead of giving it weight 0)`);
  }
  const sum = pairs.reduce((s, p) => s + p.weight, 0);
  return pairs.map((p) => ({ weight: p.weight / sum, path: p.path }));
}

/**
 * Random access to the blending indices without materialising them: the greedy state (counts per dataset) is
 * snapshotted every BLOCK samples as it is first computed, and sample i is reached by replaying at most BLOCK steps
 * from the snapshot below it. Same arithmetic, in the same order, as the sequential C++ loop, hence the same result.
 */
export class BlendIndex {
  private static readonly BLOCK = 4096;
  private readonly weights: Float64Array;
  /** snapshots[b] = counts before sample b * BLOCK. */
  private readonly snapshots: Float64Array[] = [];
  private cachedBlock = -1;
  private cachedDataset = new Int32Array(0);
  private cachedSample = new Float64Array(0);

  /** weights: already normalised to sum 1 (as parseDataPaths returns them); normalising twice could change the last bit. */
  constructor(weights: readonly number[]) {
    if (weights.length === 0) throw new RangeError('BlendIndex needs at least one weight');
    this.weights = Float64Array.from(weights);
    this.snapshots.push(new Float64Array(weights.length));
  }

  /** The dataset and that dataset's sample index for global sample i. */
  at(i: number): { dataset: number; sample: number } {
    const b = Math.floor(i / BlendIndex.BLOCK);
    if (b !== this.cachedBlock) this.fillBlock(b);
    const r = i - b * BlendIndex.BLOCK;
    return { dataset: this.cachedDataset[r], sample: this.cachedSample[r] };
  }

  private fillBlock(b: number): void {
    const B = BlendIndex.BLOCK;
    while (this.snapshots.length <= b) {
      const k = this.snapshots.length - 1;
      const counts = Float64Array.from(this.snapshots[k]);
      for (let i = k * B; i < (k + 1) * B; i++) this.step(i, counts);
      this.snapshots.push(counts);
    }
    const counts = Float64Array.from(this.snapshots[b]);
    this.cachedDataset = new Int32Array(B);
    this.cachedSample = new Float64Array(B);
    for (let r = 0; r < B; r++) {
      const d = this.step(b * B + r, counts);
      this.cachedDataset[r] = d;
      this.cachedSample[r] = counts[d] - 1;
    }
    this.cachedBlock = b;
  }

  /** One step of the greedy rule; updates counts and returns the chosen dataset. */
  private step(i: number, counts: Float64Array): number {
    const x = Math.max(i, 1);
    let best = 0;
    let bestErr = this.weights[0] * x - counts[0];
    for (let d = 1; d < this.weights.length; d++) {
      const err = this.weights[d] * x - counts[d];
      if (err > bestErr) {
        bestErr = err;
        best = d;
      }
    }
    counts[best] += 1;
    return best;
  }
}
