/**
 * GPT-2 (transformers' GPT2LMHeadModel) in eval mode: learned positions, pre-LayerNorm blocks, fused qkv Conv1D,
 * gelu_new MLP, final LayerNorm, head tied to the token embedding unless the config unties it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { activate } from './activations.ts';
import { CausalMaskCache, causalAttention, type RecomputeGranularity, mergeHeads, splitHeads } from './attention.ts';
import { TransformerLM, type RecomputeLayers } from './base.ts';
import type { ModelConfig } from './config.ts';
import { embed, TokenIdError } from './embedding.ts';
import { conv1d } from './linear.ts';
import { layerNorm } from './norms.ts';

export class Gpt2LM extends TransformerLM {
  private readonly masks = new CausalMaskCache();

  constructor(config: ModelConfig, params: Map<string, tf.Variable>, recompute: RecomputeGranularity = null, recomputeLayers?: RecomputeLayers) {
    super(config, params, recompute, recomputeLayers);
  }

  headWeight(): tf.Tensor2D {
    return this.config.tieWordEmbeddings ? this.p<tf.Rank.R2>('transformer.wte.weight') : this.p<tf.Rank.R2>('lm_head.weight');
  }

  hidden(inputIds: tf.Tensor2D): tf.Tensor3D {
    this.checkInput(inputIds);
    const c = this.config;
    const [b, t] = inputIds.shape;
    if (t > c.maxPositions) {
      throw new TokenIdError(
        `input_ids has ${t} positions but GPT-2's learned position table (n_positions) holds ${c.maxPositions}; use --seq_length ≤ ${c.maxPositions}`,
      );
    }
    const mask = this.masks.get(t);
    return tf.tidy(() => {
      const tok = embed(this.p<tf.Rank.R2>('transformer.wte.weight'), inputIds);
      const pos = tf.slice(this.p<tf.Rank.R2>('transformer.wpe.weight'), [0, 0], [t, c.hiddenSize]);
      let h: tf.Tensor2D = tf.reshape(tf.add(tok, pos), [b * t, c.hiddenSize]);
      h = this.layers(h, (i, x) => this.block(i, x, b, t, mask));
      const out = layerNorm(h, this.p('transformer.ln_f.weight'), this.p('transformer.ln_f.bias'), c.normEps);
      return tf.reshape(out, [b, t, c.hiddenSize]);
    });
  }

  protected layerPrefix(i: number): string {
    return `transformer.h.${i}.`;
  }

  private block(i: number, h: tf.Tensor2D, b: number, t: number, mask: tf.Tensor2D): tf.Tensor2D {
    const c = this.config;
    const pre = this.layerPrefix(i);
    const P = <R extends tf.Rank>(n: string): tf.Tensor<R> => this.p<R>(pre + n);
    const x = layerNorm(h, P('ln_1.weight'), P('ln_1.bias'), c.normEps);
    const qkv = conv1d(x, P('attn.c_attn.weight'), P('attn.c_attn.bias'));
    const [q, k, v] = tf.split(qkv, 3, 1) as tf.Tensor2D[];
    const heads = (y: tf.Tensor2D): tf.Tensor4D => splitHeads(y, b, t, c.numHeads, c.headDim);
    let scale = 1 / Math.sqrt(c.headDim);
    if (c.scaleAttnByInverseLayerIdx) scale /= i + 1;
    const att = mergeHeads(causalAttention(heads(q), heads(k), heads(v), mask, scale, this.recompute));
    const h1 = tf.add<tf.Tensor2D>(h, conv1d(att, P('attn.c_proj.weight'), P('attn.c_proj.bias')));
    const x2 = layerNorm(h1, P('ln_2.weight'), P('ln_2.bias'), c.normEps);
    const m = activate(c.activation, conv1d(x2, P('mlp.c_fc.weight'), P('mlp.c_fc.bias')));
    return tf.add<tf.Tensor2D>(h1, conv1d(m, P('mlp.c_proj.weight'), P('mlp.c_proj.bias')));
  }

  protected disposeCaches(): void {
    this.masks.dispose();
  }
}
