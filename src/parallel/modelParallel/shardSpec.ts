/**
 * Which part of each Hugging Face tensor a model-parallel rank holds, so that checkpoints stay in the plain
 * Hugging Face layout whatever the layout: a rank slices its part out of the full tensors on load and the parts
 * are placed back into full tensors on save. Megatron's split, per tensor-parallel rank r of T:
 *   column-parallel (output features split): q/k/v, gate/up (Linear rows), GPT-2 c_attn and c_fc (Conv1D columns)
 *   row-parallel (input features split): o_proj, down_proj (Linear columns), GPT-2 c_proj (Conv1D rows)
 *   vocabulary-parallel: the embedding and the head (rows [r·P/T, (r+1)·P/T) of the vocabulary padded to P rows,
 *   vocabPadding.ts: a rank's rows past the model's own vocabulary are zero padding, which no file holds)
 *   replicated: norms, position embeddings, biases added after a row-parallel all-reduce.
 * KV heads split when T divides them; otherwise (GQA with fewer KV heads than ranks) each rank holds the one KV
 * head its query heads read, replicated over T / kv ranks. Pipeline stages hold only their layers; with tied
 * embeddings the last stage holds a copy of the embedding as its head.
 */
import type { ModelConfig } from '../../model/config.ts';
import { expectedParamShapes } from '../../model/params.ts';
import { stagePlan, type ParallelLayout, type RankCoords } from '../layout.ts';
import { paddedVocabSize, sliceVocabRows, vocabShard, type VocabShard } from './vocabPadding.ts';

/** The local tensor is the concatenation, along `axis`, of these ranges of the full tensor. */
export interface TensorSlice {
  axis: 0 | 1;
  ranges: [number, number][];
}

export interface LocalParam {
  /** The full tensor's shape, as in the file. */
  fullShape: number[];
  localShape: number[];
  /** null: the whole tensor (replicated over tensor-parallel ranks). */
  slice: TensorSlice | null;
  /**
   * How many tensor-parallel ranks hold the same values (1 for a proper shard, T for a replicated tensor,
   * T / kv for a replicated KV head): their gradients are partial sums when the tensor is computed from the
   * rank's own heads (KV heads), or identical copies (norms), which `gradientSum` tells apart.
   */
  replicas: number;
  /** Gradients of this tensor must be summed over its replicas (a KV head read by the query heads of several ranks). */
  gradientSum: boolean;
  /** Counts in the global gradient norm on this rank (each value once across the model-parallel group). */
  inNorm: boolean;
  /**
   * The embedding and the head: this rank's rows of the padded vocabulary. `slice` names the model's own rows among
   * them (the first `vocab.valid`); the local tensor has `vocab.rows`, the rest zero padding.
   */
  vocab?: VocabShard;
}

/** The embedding's name, and whether a separate head exists. */
export function embeddingName(c: ModelConfig): string {
  return c.modelType === 'gpt2' ? 'transformer.wte.weight' : 'model.embed_tokens.weight';
}

function layerOf(name: string): number | null {
  const m = /\.(?:layers|h)\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : null;
}

/**
 * The parameters rank `coords` holds, by Hugging Face name, in model order. `paddedVocab`: the rows the vocabulary
 * pads to under TP (vocabPadding.ts; a teacher and its student pass the pair's one size); by default the model's own
 * vocabulary padded to a multiple of tp only. With one TP rank nothing pads.
 */
export function localParams(
  c: ModelConfig,
  l: ParallelLayout,
  coords: RankCoords,
  paddedVocab = paddedVocabSize(c.vocabSize, l.tp, 1),
): Map<string, LocalParam> {
  const T = l.tp;
  const r = coords.tp;
  const plan = stagePlan(c.numLayers, l.pp, coords.pp);
  const hd = c.headDim;
  const qHeads = c.numHeads / T;
  const kvSplit = c.numKvHeads % T === 0;
  const kvHeads = kvSplit ? c.numKvHeads / T : 1;
  const kvFirst = kvSplit ? r * kvHeads : Math.floor((r * c.numKvHeads) / T);
  const kvReplicas = kvSplit ? 1 : T / c.numKvHeads;
  const part = (n: number): [number, number] => [(r * n) / T, ((r + 1) * n) / T];
  const out = new Map<string, LocalParam>();
  const emb = embeddingName(c);
  const vocab = vocabShard(c.vocabSize, l.tp === 1 ? c.vocabSize : paddedVocab, T, r);
  for (const [name, shape] of expectedParamShapes(c)) {
    const layer = layerOf(name);
    const onStage =
      layer !== null
        ? layer >= plan.firstLayer && layer < plan.endLayer
        : name === emb
          ? plan.hasEmbedding || (plan.hasHead && c.tieWordEmbeddings)
          : name === 'transformer.wpe.weight'
            ? plan.hasEmbedding
            : plan.hasHead; // final norm, lm_head
    if (!onStage) continue;
    const leaf = name.replace(/^.*\.(?:layers|h)\.\d+\./, '');
    let slice: TensorSlice | null = null;
    let replicas = T;
    let gradientSum = false;
    const split = (axis: 0 | 1, n: number): void => {
      slice = { axis, ranges: [part(n)] };
      replicas = 1;
    };
    const isVocab = name === emb || name === 'lm_head.weight';
    if (isVocab) {
      // A rank holding only padding has no rows of the file: an empty range at its end, not past it.
      const at = Math.min(vocab.first, c.vocabSize);
      slice = { axis: 0, ranges: [[at, at + vocab.valid]] };
      replicas = 1;
    } else if (/self_attn\.q_proj\.(weight|bias)$/.test(leaf)) split(0, shape[0]);
    else if (/self_attn\.[kv]_proj\.(weight|bias)$/.test(leaf)) {
      slice = { axis: 0, ranges: [[kvFirst * hd, (kvFirst + kvHeads) * hd]] };
      replicas = kvReplicas;
      gradientSum = kvReplicas > 1;
    } else if (leaf === 'self_attn.o_proj.weight' || leaf === 'mlp.down_proj.weight') split(1, shape[1]);
    else if (/mlp\.(gate|up)_proj\.(weight|bias)$/.test(leaf)) split(0, shape[0]);
    else if (leaf === 'attn.c_attn.weight' || leaf === 'attn.c_attn.bias') {
      // Conv1D (in, out) with out = [q | k | v]: this rank's heads of each.
      const d = c.hiddenSize;
      const axis = leaf.endsWith('weight') ? 1 : 0;
      slice = { axis, ranges: [0, 1, 2].map((j): [number, number] => [j * d + r * qHeads * hd, j * d + (r + 1) * qHeads * hd]) };
      replicas = 1;
    } else if (leaf === 'attn.c_proj.weight' || leaf === 'mlp.c_proj.weight') split(0, shape[0]);
    else if (leaf === 'mlp.c_fc.weight') split(1, shape[1]);
    else if (leaf === 'mlp.c_fc.bias') split(0, shape[0]);
    const s = slice as TensorSlice | null;
    const localShape = [...shape];
    if (s) localShape[s.axis] = isVocab ? vocab.rows : s.ranges.reduce((a, [x, y]) => a + (y - x), 0);
    // Each value counts once in the norm: replicas on their first rank only, the tied head copy not at all.
    const firstReplica = replicas === 1 || r % replicas === 0;
    const tiedCopy = name === emb && !plan.hasEmbedding;
    out.set(name, { fullShape: [...shape], localShape, slice: s, replicas, gradientSum, inNorm: firstReplica && !tiedCopy, ...(isVocab ? { vocab } : {}) });
  }
  return out;
}

/** A rank's local tensor from the full one: its slice, and for a vocabulary tensor its zero padding rows after. */
export function localPart(full: Float32Array, p: LocalParam): Float32Array {
  return p.vocab ? sliceVocabRows(full, p.fullShape[1], p.vocab) : sliceTensor(full, p.fullShape, p.slice);
}

/** The local part of a full row-major tensor. */
export function sliceTensor(full: Float32Array, shape: readonly number[], s: TensorSlice | null): Float32Array {
  if (!s) return full.slice();
  const rows = shape[0];
  const cols = shape.length > 1 ? shape[1] : 1;
  if (s.axis === 0) {
    const parts = s.ranges.map(([a, b]) => full.subarray(a * cols, b * cols));
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  const width = s.ranges.reduce((a, [x, y]) => a + (y - x), 0);
  const out = new Float32Array(rows * width);
  for (let i = 0; i < rows; i++) {
    let at = i * width;
    for (const [a, b] of s.ranges) {
      out.set(full.subarray(i * cols + a, i * cols + b), at);
      at += b - a;
    }
  }
  return out;
}

/** Writes a local part back into its place in the full tensor (the inverse of sliceTensor). */
export function placeSlice(full: Float32Array, shape: readonly number[], s: TensorSlice | null, local: Float32Array): void {
  if (!s) {
    full.set(local);
    return;
  }
  const rows = shape[0];
  const cols = shape.length > 1 ? shape[1] : 1;
  if (s.axis === 0) {
    let at = 0;
    for (const [a, b] of s.ranges) {
      full.set(local.subarray(at, at + (b - a) * cols), a * cols);
      at += (b - a) * cols;
    }
    return;
  }
  const width = s.ranges.reduce((a, [x, y]) => a + (y - x), 0);
  for (let i = 0; i < rows; i++) {
    let at = i * width;
    for (const [a, b] of s.ranges) {
      full.set(local.subarray(at, at + (b - a)), i * cols + a);
      at += b - a;
    }
  }
}
