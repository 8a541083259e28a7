/**
 * The parallel layout: TP × CP × DP × PP workers, how a global rank maps to its four coordinates, the groups
 * each rank talks to, and how the layers are cut into pipeline stages. The rank order is Megatron's default
 * ("tp-cp-dp-pp": tensor-parallel ranks are adjacent, pipeline stages furthest apart), so the busiest group
 * (TP, an all-reduce per layer) sits on neighbouring devices.
 */
import { ConfigError } from '../errors.ts';
import type { ModelConfig } from '../model/config.ts';

export interface ParallelLayout {
  tp: number;
  cp: number;
  dp: number;
  pp: number;
}

export interface RankCoords {
  tp: number;
  cp: number;
  dp: number;
  pp: number;
}

export function worldSize(l: ParallelLayout): number {
  return l.tp * l.cp * l.dp * l.pp;
}

export function coordsOf(l: ParallelLayout, rank: number): RankCoords {
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize(l)) throw new RangeError(`rank ${rank} is outside the layout's ${worldSize(l)} workers`);
  const tp = rank % l.tp;
  const cp = Math.floor(rank / l.tp) % l.cp;
  const dp = Math.floor(rank / (l.tp * l.cp)) % l.dp;
  const pp = Math.floor(rank / (l.tp * l.cp * l.dp));
  return { tp, cp, dp, pp };
}

export function rankOf(l: ParallelLayout, c: RankCoords): number {
  return c.tp + l.tp * (c.cp + l.cp * (c.dp + l.dp * c.pp));
}

type Axis = keyof RankCoords;

/** The ranks that share every coordinate of `rank` except those in `vary`, in rank order. */
export function groupOf(l: ParallelLayout, rank: number, vary: readonly Axis[]): number[] {
  const me = coordsOf(l, rank);
  const out: number[] = [];
  for (let r = 0; r < worldSize(l); r++) {
    const c = coordsOf(l, r);
    if ((['tp', 'cp', 'dp', 'pp'] as const).every((a) => vary.includes(a) || c[a] === me[a])) out.push(r);
  }
  return out;
}

/** The layers [first, end) of one pipeline stage; the first stage holds the embedding, the last the final norm, head and loss. */
export interface StagePlan {
  stage: number;
  stages: number;
  firstLayer: number;
  endLayer: number;
  hasEmbedding: boolean;
  hasHead: boolean;
}

/**
 * Contiguous stages, the remainder of layers / stages going to the earlier stages (the last stage also carries
 * the head and the loss). A last stage with no transformer layer is allowed (a one-layer student in two stages:
 * embedding and layer on the first, norm, head and loss on the second); an empty middle stage is not.
 */
export function stagePlan(numLayers: number, stages: number, stage: number): StagePlan {
  const base = Math.floor(numLayers / stages);
  const extra = numLayers % stages;
  const count = (s: number): number => base + (s < extra ? 1 : 0);
  let first = 0;
  for (let s = 0; s < stage; s++) first += count(s);
  return { stage, stages, firstLayer: first, endLayer: first + count(stage), hasEmbedding: stage === 0, hasHead: stage === stages - 1 };
}

/**
 * Refuses a layout a model cannot take, with the arithmetic: heads and vocabulary must split evenly over TP
 * (KV heads either split or are replicated evenly), the MLP width too, and there can be at most one stage more
 * than layers.
 */
export function checkModelLayout(l: ParallelLayout, c: ModelConfig, which: string): void {
  const bad = (why: string): never => {
    throw new ConfigError(
      `${which} (${c.sourceModelType}, ${c.numLayers} layers, ${c.numHeads} heads, ${c.numKvHeads} KV heads, vocab ${c.vocabSize}) cannot take tp ${l.tp} × pp ${l.pp} × cp ${l.cp}: ${why}`,
    );
  };
  if (c.numHeads % l.tp !== 0) bad(`${c.numHeads} attention heads do not split over --tp_size ${l.tp} (${c.numHeads} mod ${l.tp} = ${c.numHeads % l.tp})`);
  if (c.numKvHeads % l.tp !== 0 && l.tp % c.numKvHeads !== 0) {
    bad(`${c.numKvHeads} KV heads neither split over --tp_size ${l.tp} nor replicate evenly (${l.tp} mod ${c.numKvHeads} = ${l.tp % c.numKvHeads})`);
  }
  if (c.vocabSize % l.tp !== 0)
    bad(
      `the vocabulary of ${c.vocabSize} does not split over --tp_size ${l.tp} (${c.vocabSize} mod ${l.tp} = ${c.vocabSize % l.tp}); pad it to a multiple of ${l.tp}`,
    );
  if (c.intermediateSize % l.tp !== 0) bad(`the MLP width ${c.intermediateSize} does not split over --tp_size ${l.tp}`);
  if (l.pp > c.numLayers + 1)
    bad(`--pp_size ${l.pp} stages need at least ${l.pp - 1} transformer layers (one per stage, the last stage may hold only the head); it has ${c.numLayers}`);
  if (c.slidingWindow !== null && l.cp > 1) bad('sliding-window attention is not supported with --cp_size > 1');
}
