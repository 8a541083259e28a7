/**
 * What every causal language model in this project offers the pipeline. Models are written once against
 * tfjs-core ops, so one code path runs on every backend.
 *
 * The head is kept apart from the trunk (`hidden` and `headWeight` rather than only `logits`) because the
 * [tokens, vocab] logits are the memory peak: the losses compute them chunk by chunk from the hidden states.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.ts';

/** Called with a trainable parameter's name (as in `params`) and its gradient, once the backward pass has finished it. */
export type ParameterGradientHook = (name: string, grad: tf.Tensor) => void;

export interface CausalLM {
  readonly config: ModelConfig;
  /**
   * The parameters under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, `transformer.h.0.attn.c_attn.weight`),
   * in the layout of the checkpoint file. A tied `lm_head.weight` is absent, as in the file.
   */
  readonly params: Map<string, tf.Variable>;
  /** The final hidden states (after the last norm), [batch, seq, hidden], float32. */
  hidden(inputIds: tf.Tensor2D): tf.Tensor3D;
  /** The output projection, [vocab, hidden]: the embedding when tied. Not a copy; do not dispose. */
  headWeight(): tf.Tensor2D;
  /** Full logits, [batch, seq, vocab]: hidden · headWeightᵀ. For inference and small vocabularies. */
  logits(inputIds: tf.Tensor2D): tf.Tensor3D;
  /** [hidden, vocab]: the head transposed, cached, for a frozen model; null for a trainable one. Do not dispose. */
  frozenHeadTransposed(): tf.Tensor2D | null;
  /**
   * Runs `f`, a forward and backward pass (tf.variableGrads), with every trainable parameter the forward reads
   * passed through a gradient hook (ops/gradientHook.ts): `onGradient` gets each parameter's whole gradient as
   * soon as the backward pass has finished it, last layer first, a tied embedding once. The gradients tfjs returns
   * are unchanged. Optional: a model without it gives its gradients when the tape is done.
   */
  withGradientHooks?<T>(onGradient: ParameterGradientHook, f: () => T): T;
  /** Trainable parameters (all of them for a student; none for a frozen teacher). */
  trainableVariables(): tf.Variable[];
  dispose(): void;
}
