/**
 * What GPT-2 and Llama share as CausalLM implementations: the parameter map, the head, the caches they own and
 * their disposal. Each architecture writes only its trunk (`hidden`).
 */
import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError } from '../errors.ts';
import type { RecomputeGranularity } from './attention.ts';
import type { CausalLM, ParameterGradientHook } from './causalLM.ts';
import { gradientHook } from '../ops/gradientHook.ts';
import { recomputeInBackward } from '../ops/recompute.ts';
import type { ModelConfig } from './config.ts';
import { checkIdsTensor, TokenIdError } from './embedding.ts';

export interface ModelOptions {
  /** false for a teacher: its variables are created non-trainable and never receive gradients. */
  trainable: boolean;
  /** What the backward computes again instead of keeping (NeMo's `recompute_granularity`); absent: nothing. */
  recompute?: RecomputeGranularity;
  /** Under recompute 'full': which layers (NeMo's recompute_method and recompute_num_layers); default uniform, 1. */
  recomputeLayers?: RecomputeLayers;
}

/** The values `--recompute_method` takes. */
export const RECOMPUTE_METHODS = ['uniform', 'block'] as const;

/**
 * Which layers recompute 'full' recomputes, as Megatron's recompute_method: 'uniform' cuts the layers into chunks
 * of `numLayers` and keeps only each chunk's input; 'block' recomputes the first `numLayers` layers (each keeping
 * its input) and keeps everything of the rest.
 */
export interface RecomputeLayers {
  method: (typeof RECOMPUTE_METHODS)[number];
  numLayers: number;
}

export const DEFAULT_RECOMPUTE_LAYERS: RecomputeLayers = { method: 'uniform', numLayers: 1 };

export abstract class TransformerLM implements CausalLM {
  constructor(
    readonly config: ModelConfig,
    readonly params: Map<string, tf.Variable>,
    /** A student's choice for its training steps; a teacher runs forward only and has nothing to recompute. */
    readonly recompute: RecomputeGranularity = null,
    readonly recomputeLayers: RecomputeLayers = DEFAULT_RECOMPUTE_LAYERS,
  ) {
    if (!(Number.isInteger(recomputeLayers.numLayers) && recomputeLayers.numLayers >= 1))
      throw new RangeError(`recompute_num_layers must be a positive integer, got ${recomputeLayers.numLayers}`);
  }

  /** Parameter tensors that stand in for the variables while a recomputed chunk of layers runs (recomputedChunk). */
  private overrides: Map<string, tf.Tensor> | null = null;

  /** The prefix of layer i's parameter names (`model.layers.3.`). */
  protected abstract layerPrefix(i: number): string;

  /**
   * Runs the trunk's layers on h. Under recompute 'full' the layers go in chunks (recomputeLayers) whose forward
   * keeps nothing but the chunk's input (ops/recompute.ts), the chunk's parameters passed in as inputs so that their
   * gradients (and gradient hooks) come out of it; while a chunk runs, p() reads those inputs.
   */
  protected layers(h: tf.Tensor2D, layer: (i: number, h: tf.Tensor2D) => tf.Tensor2D): tf.Tensor2D {
    const n = this.config.numLayers;
    if (this.recompute !== 'full') {
      for (let i = 0; i < n; i++) h = layer(i, h);
      return h;
    }
    const { method, numLayers } = this.recomputeLayers;
    for (let i = 0; i < n;) {
      if (method === 'block' && i >= numLayers) {
        h = layer(i, h);
        i++;
        continue;
      }
      const end = method === 'uniform' ? Math.min(n, i + numLayers) : i + 1;
      h = this.recomputedChunk(i, end, h, layer);
      i = end;
    }
    return h;
  }

  private recomputedChunk(from: number, to: number, h: tf.Tensor2D, layer: (i: number, h: tf.Tensor2D) => tf.Tensor2D): tf.Tensor2D {
    const prefixes = Array.from({ length: to - from }, (_, k) => this.layerPrefix(from + k));
    const names = [...this.params.keys()].filter((name) => prefixes.some((p) => name.startsWith(p)) && this.params.get(name)!.trainable);
    const run = (x: tf.Tensor, ps: tf.Tensor[]): tf.Tensor2D => {
      const outer = this.overrides;
      this.overrides = new Map(names.map((name, k) => [name, ps[k]]));
      try {
        let y = x as tf.Tensor2D;
        for (let i = from; i < to; i++) y = layer(i, y);
        return y;
      } finally {
        this.overrides = outer;
      }
    };
    return recomputeInBackward((xs) => run(xs[0], xs.slice(1)), [h, ...names.map((name) => this.p(name))]);
  }

  /** While withGradientHooks runs: the hook, and each parameter's hooked view (one per parameter, so a tied one fires once). */
  private hooks: { onGradient: ParameterGradientHook; views: Map<string, tf.Tensor> } | null = null;

  /** The parameter `name`, typed by rank; a missing one is a loader bug or a hand-built map, so it says which. */
  protected p<R extends tf.Rank>(name: string): tf.Tensor<R> {
    const v = this.maybe<R>(name);
    if (!v) throw new CheckpointError(`model parameter "${name}" is missing (${this.config.sourceModelType} with ${this.config.numLayers} layers)`);
    return v;
  }

  /** Optional parameters (biases that some variants carry). */
  protected maybe<R extends tf.Rank>(name: string): tf.Tensor<R> | undefined {
    const stand = this.overrides?.get(name);
    if (stand) return stand as tf.Tensor<R>;
    const v = this.params.get(name) as tf.Variable<R> | undefined;
    const h = this.hooks;
    if (!v || !h || !v.trainable) return v;
    let view = h.views.get(name);
    if (!view) {
      // Kept: the first read may come inside a tidy (a layer's) that ends long before the backward pass.
      view = tf.keep(gradientHook(v, (grad) => h.onGradient(name, grad)));
      h.views.set(name, view);
    }
    return view as tf.Tensor<R>;
  }

  withGradientHooks<T>(onGradient: ParameterGradientHook, f: () => T): T {
    if (this.hooks) throw new Error('withGradientHooks: already inside a hooked pass (nested gradient tapes are not supported here)');
    this.hooks = { onGradient, views: new Map() };
    const views = this.hooks.views;
    try {
      return f();
    } finally {
      this.hooks = null;
      for (const view of views.values()) view.dispose();
    }
  }

  /** Checks the ids' rank, dtype and range on the host, before any device work: tfjs would not fail on a bad id. */
  protected checkInput(inputIds: tf.Tensor2D): void {
    if (inputIds.rank !== 2) throw new TokenIdError(`input_ids must be [batch, seq], got shape [${inputIds.shape}]`);
    checkIdsTensor(inputIds, this.config.vocabSize);
  }

  abstract hidden(inputIds: tf.Tensor2D): tf.Tensor3D;
  abstract headWeight(): tf.Tensor2D;
  /** Releases the caches (masks, RoPE tables) beside the variables. */
  protected abstract disposeCaches(): void;

  logits(inputIds: tf.Tensor2D): tf.Tensor3D {
    return tf.tidy(() => {
      const h = this.hidden(inputIds);
      const [b, t, d] = h.shape;
      const w = this.headWeight();
      return tf.reshape(tf.matMul(tf.reshape(h, [b * t, d]), w, false, true), [b, t, w.shape[0]]);
    });
  }

  trainableVariables(): tf.Variable[] {
    return [...this.params.values()].filter((v) => v.trainable);
  }

  private headT: tf.Tensor2D | null = null;

  /**
   * The head transposed, [hidden, vocab], made once and kept, for a frozen model (null for a trainable one, whose
   * head changes every step). Multiplying by it needs no transpose per call, and wasm's matmul caches the packed
   * operand of a tensor it has seen before.
   */
  frozenHeadTransposed(): tf.Tensor2D | null {
    if (this.trainableVariables().length > 0) return null;
    // Kept: the first call may come inside a tidy or a gradient tape, whose end would dispose it.
    if (!this.headT) this.headT = tf.keep(tf.tidy(() => tf.transpose(this.headWeight()) as tf.Tensor2D));
    return this.headT;
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.headT?.dispose();
    this.headT = null;
    this.disposeCaches();
  }
}
