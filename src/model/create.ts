/**
 * Builds a CausalLM from a config and a source of weights. The loader passes tensors read from safetensors; tests
 * and student initialisation can pass anything that yields float32 data of the expected shape.
 */
import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError } from '../errors.ts';
import type { ModelOptions } from './base.ts';
import type { CausalLM } from './causalLM.ts';
import type { ModelConfig } from './config.ts';
import { Gpt2LM } from './gpt2.ts';
import { LlamaLM } from './llama.ts';
import { expectedParamShapes } from './params.ts';

/** Yields the float32 data of parameter `name` (row-major, `shape`); called once per parameter, in model order. */
export type WeightSource = (name: string, shape: number[]) => Float32Array;

/**
 * Creates the model's variables from `source` on the current backend. Variables are unnamed in tfjs (names are
 * global there, and a teacher and a student share Hugging Face names); the `params` map carries the HF names.
 */
export function createModel(config: ModelConfig, source: WeightSource, opts: ModelOptions): CausalLM {
  const params = new Map<string, tf.Variable>();
  try {
    for (const [name, shape] of expectedParamShapes(config)) {
      const data = source(name, shape);
      const n = shape.reduce((a, d) => a * d, 1);
      if (data.length !== n) throw new CheckpointError(`parameter "${name}": expected ${n} values for shape [${shape}], got ${data.length}`);
      params.set(
        name,
        tf.tidy(() => tf.variable(tf.tensor(data, shape, 'float32'), opts.trainable)),
      );
    }
  } catch (e) {
    for (const v of params.values()) v.dispose();
    throw e;
  }
  const recompute = opts.recompute ?? null;
  return config.modelType === 'gpt2'
    ? new Gpt2LM(config, params, recompute, opts.recomputeLayers)
    : new LlamaLM(config, params, recompute, opts.recomputeLayers);
}
