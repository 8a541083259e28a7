/**
 * Context parallelism's split of a sequence: 2·CP chunks, rank r taking chunk r and chunk 2·CP − 1 − r, so that
 * under a causal mask every rank has about the same attention work (the front chunks see few keys, the back ones
 * many), as Megatron's context parallelism does. Lengths that do not divide evenly give chunks differing by one.
 */
export interface SequenceSplit {
  seqLength: number;
  /** This rank's positions, in order. */
  local: number[];
  /** Every rank's positions, end to end in rank order: the order of the gathered keys and values. */
  keys: number[];
  /** Positions per context-parallel rank. */
  lengths: number[];
  /** Where this rank's positions start in `keys`. */
  offset: number;
}

export function positionsOf(seqLength: number, cp: number, rank: number): number[] {
  const bound = (k: number): number => Math.floor((k * seqLength) / (2 * cp));
  const out: number[] = [];
  for (const c of cp === 1 ? [0, 1] : [rank, 2 * cp - 1 - rank]) for (let p = bound(c); p < bound(c + 1); p++) out.push(p);
  return out;
}

export function sequenceSplit(seqLength: number, cp: number, rank: number): SequenceSplit {
  const all = Array.from({ length: cp }, (_, r) => positionsOf(seqLength, cp, r));
  return {
    seqLength,
    local: all[rank],
    keys: all.flat(),
    lengths: all.map((a) => a.length),
    offset: all.slice(0, rank).reduce((a, x) => a + x.length, 0),
  };
}

/** Rows `positions` of each of the `batch` rows of a row-major [batch, seqLength] array. */
export function takePositions<T extends Int32Array | Float32Array>(data: T, batch: number, seqLength: number, positions: readonly number[]): T {
  const out = new (data.constructor as { new (n: number): T })(batch * positions.length);
  for (let b = 0; b < batch; b++)
    positions.forEach((p, j) => {
      out[b * positions.length + j] = data[b * seqLength + p];
    });
  return out;
}
