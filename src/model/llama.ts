/**
 * The Llama family (transformers' LlamaForCausalLM; Mistral and Qwen2 load into it): RMSNorm, RoPE on q and k,
 * grouped-query attention, SwiGLU MLP, optional attention/MLP biases, head tied or separate.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gatedActivation } from './activations.ts';
import { CausalMaskCache, causalAttention, type RecomputeGranularity, mergeHeads, splitHeads } from './attention.ts';
import { TransformerLM, type RecomputeLayers } from './base.ts';
import type { ModelConfig } from './config.ts';
import { embed } from './embedding.ts';
import { linear } from './linear.ts';
import { rmsNorm } from './norms.ts';
import { applyRope, RopeCache, ropeInvFreq, type RopeTables } from './rope.ts';

export class LlamaLM extends TransformerLM {
  private readonly masks: CausalMaskCache;
  private readonly rope: RopeCache;

  constructor(config: ModelConfig, params: Map<string, tf.Variable>, recompute: RecomputeGranularity = null, recomputeLayers?: RecomputeLayers) {
    super(config, params, recompute, recomputeLayers);
    this.masks = new CausalMaskCache(config.slidingWindow);
    this.rope = new RopeCache(ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling), config.headDim);
  }

  headWeight(): tf.Tensor2D {
    return this.config.tieWordEmbeddings ? this.p<tf.Rank.R2>('model.embed_tokens.weight') : this.p<tf.Rank.R2>('lm_head.weight');
  }

  hidden(inputIds: tf.Tensor2D): tf.Tensor3D {
    this.checkInput(inputIds);
    const c = this.config;
    const [b, t] = inputIds.shape;
    const mask = this.masks.get(t);
    const rope = this.rope.get(t);
    return tf.tidy(() => {
      let h: tf.Tensor2D = tf.reshape(embed(this.p<tf.Rank.R2>('model.embed_tokens.weight'), inputIds), [b * t, c.hiddenSize]);
      h = this.layers(h, (i, x) => this.block(i, x, b, t, mask, rope));
      return tf.reshape(rmsNorm(h, this.p('model.norm.weight'), c.normEps), [b, t, c.hiddenSize]);
    });
  }

  protected layerPrefix(i: number): string {
    return `model.layers.${i}.`;
  }

  private block(i: number, h: tf.Tensor2D, b: number, t: number, mask: tf.Tensor2D, rope: RopeTables): tf.Tensor2D {
    const c = this.config;
    const pre = this.layerPrefix(i);
    const P = <R extends tf.Rank>(n: string): tf.Tensor<R> => this.p<R>(pre + n);
    const B = (n: string): tf.Tensor1D | undefined => this.maybe<tf.Rank.R1>(pre + n);
    const x = rmsNorm(h, P('input_layernorm.weight'), c.normEps);
    const proj = (n: string, heads: number): tf.Tensor4D => splitHeads(linear(x, P(`self_attn.${n}.weight`), B(`self_attn.${n}.bias`)), b, t, heads, c.headDim);
    const q = applyRope(proj('q_proj', c.numHeads), rope);
    const k = applyRope(proj('k_proj', c.numKvHeads), rope);
    const v = proj('v_proj', c.numKvHeads);
    const att = mergeHeads(causalAttention(q, k, v, mask, 1 / Math.sqrt(c.headDim), this.recompute));
    const h1 = tf.add<tf.Tensor2D>(h, linear(att, P('self_attn.o_proj.weight'), B('self_attn.o_proj.bias')));
    const x2 = rmsNorm(h1, P('post_attention_layernorm.weight'), c.normEps);
    const gate = linear(x2, P('mlp.gate_proj.weight'), B('mlp.gate_proj.bias'));
    const up = linear(x2, P('mlp.up_proj.weight'), B('mlp.up_proj.bias'));
    return tf.add<tf.Tensor2D>(h1, linear(gatedActivation(c.activation, gate, up), P('mlp.down_proj.weight'), B('mlp.down_proj.bias')));
  }

  protected disposeCaches(): void {
    this.masks.dispose();
    this.rope.dispose();
  }
}
