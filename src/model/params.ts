/**
 * The parameters each architecture has, under the names and in the layouts `transformers` writes them
 * (`GPT2LMHeadModel`, `LlamaForCausalLM`). The loader checks a file against this list and the saver writes it,
 * so both agree with transformers by construction.
 */
import type { ModelConfig } from './config.ts';

/** Ordered name → shape; insertion order is the model's order (embedding, layers, final norm, head). */
export type ParamShapes = Map<string, number[]>;

/** The prefix of the trunk in the *ForCausalLM class; base-model files (GPT2Model, LlamaModel) omit it. */
export function trunkPrefix(config: ModelConfig): string {
  return config.modelType === 'gpt2' ? 'transformer.' : 'model.';
}

function gpt2Shapes(c: ModelConfig): ParamShapes {
  const h = c.hiddenSize;
  const m = new Map<string, number[]>();
  m.set('transformer.wte.weight', [c.vocabSize, h]);
  m.set('transformer.wpe.weight', [c.maxPositions, h]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `transformer.h.${i}.`;
    m.set(`${p}ln_1.weight`, [h]);
    m.set(`${p}ln_1.bias`, [h]);
    // Conv1D: weights are (in, out).
    m.set(`${p}attn.c_attn.weight`, [h, 3 * h]);
    m.set(`${p}attn.c_attn.bias`, [3 * h]);
    m.set(`${p}attn.c_proj.weight`, [h, h]);
    m.set(`${p}attn.c_proj.bias`, [h]);
    m.set(`${p}ln_2.weight`, [h]);
    m.set(`${p}ln_2.bias`, [h]);
    m.set(`${p}mlp.c_fc.weight`, [h, c.intermediateSize]);
    m.set(`${p}mlp.c_fc.bias`, [c.intermediateSize]);
    m.set(`${p}mlp.c_proj.weight`, [c.intermediateSize, h]);
    m.set(`${p}mlp.c_proj.bias`, [h]);
  }
  m.set('transformer.ln_f.weight', [h]);
  m.set('transformer.ln_f.bias', [h]);
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, h]);
  return m;
}

function llamaShapes(c: ModelConfig): ParamShapes {
  const h = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const f = c.intermediateSize;
  const m = new Map<string, number[]>();
  m.set('model.embed_tokens.weight', [c.vocabSize, h]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.`;
    m.set(`${p}input_layernorm.weight`, [h]);
    // Linear: weights are (out, in).
    m.set(`${p}self_attn.q_proj.weight`, [q, h]);
    m.set(`${p}self_attn.k_proj.weight`, [kv, h]);
    m.set(`${p}self_attn.v_proj.weight`, [kv, h]);
    m.set(`${p}self_attn.o_proj.weight`, [h, q]);
    if (c.attentionBias) {
      m.set(`${p}self_attn.q_proj.bias`, [q]);
      m.set(`${p}self_attn.k_proj.bias`, [kv]);
      m.set(`${p}self_attn.v_proj.bias`, [kv]);
    }
    if (c.attentionOutBias) m.set(`${p}self_attn.o_proj.bias`, [h]);
    m.set(`${p}post_attention_layernorm.weight`, [h]);
    m.set(`${p}mlp.gate_proj.weight`, [f, h]);
    m.set(`${p}mlp.up_proj.weight`, [f, h]);
    m.set(`${p}mlp.down_proj.weight`, [h, f]);
    if (c.mlpBias) {
      m.set(`${p}mlp.gate_proj.bias`, [f]);
      m.set(`${p}mlp.up_proj.bias`, [f]);
      m.set(`${p}mlp.down_proj.bias`, [h]);
    }
  }
  m.set('model.norm.weight', [h]);
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, h]);
  return m;
}

/** Every parameter the model needs, by its name in a `save_pretrained` file; a tied lm_head is absent. */
export function expectedParamShapes(config: ModelConfig): ParamShapes {
  return config.modelType === 'gpt2' ? gpt2Shapes(config) : llamaShapes(config);
}

/**
 * Tensors that files may hold and transformers drops on load: GPT-2's causal-mask buffers (`attn.bias`,
 * `attn.masked_bias`, written by old versions), rotary `inv_freq` buffers, and an lm_head copy of tied embeddings.
 */
export function isIgnorableTensor(config: ModelConfig, name: string): boolean {
  if (config.modelType === 'gpt2' && /(^|\.)h\.\d+\.attn\.(bias|masked_bias)$/.test(name)) return true;
  if (/rotary_emb\.inv_freq$/.test(name)) return true;
  return config.tieWordEmbeddings && name === 'lm_head.weight';
}
