/**
 * What GPT-2 and Llama share as CausalLM implementations: the parameter map, the head, the caches they own and
 * their disposal. Each architecture writes only its trunk (`hidden`).
 */
import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError } from '../errors.ts';
import type { RecomputeGranularity } from './attention.ts';
import type { CausalLM, ParameterGradientHook } from './causalLM.ts';
import { gradientHook } from '../ops/gradientHook.ts';
import type { ModelConfig } from './config.ts';
import { checkIdsTensor, TokenIdError } from './embedding.ts';

export interface ModelOptions {
  /** false for a teacher: its variables are created non-trainable and never receive gradients. */
  trainable: boolean;
  /** What the backward computes again instead of keeping (NeMo's `recompute_granularity`); absent: nothing. */
  recompute?: RecomputeGranularity;
}

export abstract class TransformerLM implements CausalLM {
  constructor(
    readonly config: ModelConfig,
    readonly params: Map<string, tf.Variable>,
    /** A student's choice for its training steps; a teacher runs forward only and has nothing to recompute. */
    readonly recompute: RecomputeGranularity = null,
  ) {}

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
