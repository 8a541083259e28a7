/**
 * Logits kept from the chunked loss's forward pass for its backward pass, when they fit.
 *
 * chunkedHead recomputes every chunk's logits in the backward so that no pass holds [tokens, V] (1.2 GB at 2,048
 * tokens and V = 151,936, and several times that as the tape's intermediates). When all the chunks' student and
 * teacher logits together fit in KEEP_LOGITS_BYTES, recomputing buys nothing and costs a student and a teacher head
 * product per chunk, about a fifth of a config-M step on the H200 (the heads are its largest matmuls) and an
 * eighth of a config-S step on wasm. Then the forward keeps them and the backward takes them instead.
 *
 * The kept tensors travel to the backward the way tfjs hands any custom gradient its inputs: through the forward's
 * `save`, which records them on the gradient tape only when one is recording, and tfjs disposes everything saved
 * on the tape once the gradients are computed, whether or not this loss's backward ran. So nothing is kept without
 * a tape, and nothing outlives it.
 */
import * as tf from '@tensorflow/tfjs-core';

/** All chunks' kept logits, student and teacher, of one loss call: config M at V = 32,768 keeps exactly this. */
export const KEEP_LOGITS_BYTES = 1 << 30;

/** DISTILL_KEEP_LOGITS_BYTES overrides it (0: always recompute, e.g. on a GPU short of memory). */
let budget = process.env.DISTILL_KEEP_LOGITS_BYTES !== undefined ? Number(process.env.DISTILL_KEEP_LOGITS_BYTES) : KEEP_LOGITS_BYTES;

/**
 * Sets the keeping budget (0: always recompute, the memory-bounded mode that every loss whose logits exceed the
 * budget runs in); returns the previous one.
 */
export function setKeptLogitsBudget(bytes: number): number {
  const previous = budget;
  budget = bytes;
  return previous;
}

/** What a chunk term reads its recomputable tensors through. */
export interface ChunkCache {
  /** The tensor kept under `key` for chunk [start, …), or `make()` (kept for the backward when keeping). */
  remember<T extends tf.Tensor>(start: number, key: string, make: () => T): T;
}

/** The cache of a loss call that does not keep (no tape, or too large): always recompute. */
export const RECOMPUTE: ChunkCache = { remember: (_start, _key, make) => make() };

/** One loss call's kept logits: filled by the forward, handed to `save`, read back by the backward. */
export class KeptLogits implements ChunkCache {
  private readonly kept = new Map<string, tf.Tensor>();
  private filling = true;
  private bytes = 0;

  remember<T extends tf.Tensor>(start: number, key: string, make: () => T): T {
    const id = `${start}:${key}`;
    const hit = this.kept.get(id);
    if (hit) return hit as T;
    const made = make();
    // Within the budget, first come first kept: the rest of the chunks recompute as before.
    const size = made.size * 4;
    if (this.filling && this.bytes + size <= budget) {
      this.kept.set(id, tf.keep(made));
      this.bytes += size;
    }
    return made;
  }

  /**
   * Ends the forward: the kept tensors in order, for the forward's `save` (which clones them onto the tape: the
   * clone shares the data on cpu and webgpu; on wasm it is a copy, still far cheaper than a head product). The caller
   * disposes the returned originals after saving.
   */
  take(): { ids: string[]; tensors: tf.Tensor[] } {
    this.filling = false;
    const out = { ids: [...this.kept.keys()], tensors: [...this.kept.values()] };
    this.kept.clear();
    return out;
  }

  /** The backward's view: the tensors the tape saved, in handOver's order (tfjs disposes them afterwards). */
  static restore(ids: string[], saved: tf.Tensor[]): ChunkCache {
    const kept = new Map(ids.map((id, i) => [id, saved[i]]));
    return {
      remember: <T extends tf.Tensor>(start: number, key: string, make: () => T): T => (kept.get(`${start}:${key}`) as T | undefined) ?? make(),
    };
  }
}

/**
 * Whether a loss over `rows` positions with a V-wide student head keeps its logits: only under a gradient tape
 * (without one there is no backward), and only if the student's and a same-sized teacher's logits for all rows fit
 * the budget, all or nothing: a loss too large to keep whole (Qwen's V = 151,936 at 16,384 tokens is 20 GB) runs
 * exactly the memory-bounded recompute path.
 */
export function shouldKeepLogits(rows: number, vocab: number): boolean {
  return tf.engine().state.gradientDepth > 0 && rows * vocab * 4 * 2 <= budget;
}
