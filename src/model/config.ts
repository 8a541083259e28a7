/**
 * The model's `config.json`, read the way Hugging Face `transformers` reads it and normalised into one shape for
 * both families, so that the model code never looks at field aliases. `raw` keeps the original object so that a
 * saved student carries every field transformers wrote, including the ones this project does not use.
 *
 * Sizes are bounded here, before anything is allocated: a corrupt or hostile config (vocab 2^40) must fail with a
 * message, not with an out-of-memory crash minutes later.
 */
import { ConfigError, FormatError } from '../errors.ts';

export type ModelType = 'gpt2' | 'llama';

export type Activation = 'gelu_new' | 'gelu' | 'relu' | 'silu';

export interface RopeScaling {
  type: 'default' | 'linear' | 'llama3';
  factor: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

export interface ModelConfig {
  modelType: ModelType;
  /** The `model_type` as the file gives it (`llama`, `mistral`, `qwen2`, `gpt2`), kept for messages. */
  sourceModelType: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  normEps: number;
  tieWordEmbeddings: boolean;
  activation: Activation;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  /** q/k/v projections carry biases (Llama `attention_bias`, always for Qwen2). */
  attentionBias: boolean;
  /** o_proj carries a bias (Llama `attention_bias`; never for Qwen2). */
  attentionOutBias: boolean;
  mlpBias: boolean;
  /** Mistral's sliding attention window in tokens; null for full causal attention. */
  slidingWindow: number | null;
  /** GPT-2's `scale_attn_by_inverse_layer_idx`: scores of layer i are further divided by i + 1. */
  scaleAttnByInverseLayerIdx: boolean;
  raw: Record<string, unknown>;
}

/** No single dimension above 2^24 (16.7M): beyond any real vocabulary or width, and it keeps products exact. */
export const MAX_DIM = 2 ** 24;
/** No model above 2^34 parameters (64 GiB of float32): far past what tfjs can hold. */
export const MAX_PARAMS = 2 ** 34;

const LLAMA_FAMILY = new Set(['llama', 'mistral', 'qwen2']);

/** Reads one field under any of its Hugging Face aliases; `undefined` when none is present or all are null. */
function pick(json: Record<string, unknown>, names: string[]): { name: string; value: unknown } | undefined {
  for (const n of names) {
    if (json[n] !== undefined && json[n] !== null) return { name: n, value: json[n] };
  }
  return undefined;
}

class FieldReader {
  constructor(
    readonly file: string,
    readonly json: Record<string, unknown>,
  ) {}

  int(names: string[], fallback?: number): number {
    const got = pick(this.json, names);
    if (!got) {
      if (fallback !== undefined) return fallback;
      throw new FormatError(
        this.file,
        `missing field "${names[0]}"${names.length > 1 ? ` (or ${names.slice(1).join(', ')})` : ''}; a transformers config.json has it`,
      );
    }
    const v = got.value;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
      throw new FormatError(this.file, `field "${got.name}" is ${JSON.stringify(v)}, expected a positive integer`);
    }
    if (v > MAX_DIM) {
      throw new ConfigError(
        `${this.file}: field "${got.name}" is ${v}, over the limit of ${MAX_DIM} (2^24); the config is corrupt or not a model this project can hold`,
      );
    }
    return v;
  }

  num(names: string[], fallback: number): number {
    const got = pick(this.json, names);
    if (!got) return fallback;
    if (typeof got.value !== 'number' || !Number.isFinite(got.value) || got.value <= 0) {
      throw new FormatError(this.file, `field "${got.name}" is ${JSON.stringify(got.value)}, expected a positive number`);
    }
    return got.value;
  }

  bool(names: string[], fallback: boolean): boolean {
    const got = pick(this.json, names);
    if (!got) return fallback;
    if (typeof got.value !== 'boolean') throw new FormatError(this.file, `field "${got.name}" is ${JSON.stringify(got.value)}, expected true or false`);
    return got.value;
  }

  str(names: string[], fallback: string): string {
    const got = pick(this.json, names);
    if (!got) return fallback;
    if (typeof got.value !== 'string') throw new FormatError(this.file, `field "${got.name}" is ${JSON.stringify(got.value)}, expected a string`);
    return got.value;
  }
}

function parseActivation(file: string, field: string, name: string): Activation {
  switch (name) {
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return 'gelu_new';
    case 'gelu':
      return 'gelu';
    case 'relu':
      return 'relu';
    case 'silu':
    case 'swish':
      return 'silu';
    default:
      throw new ConfigError(`${file}: field "${field}" is "${name}", not supported; use gelu_new, gelu, relu or silu`);
  }
}

/**
 * RoPE settings from either spelling: transformers 4.x `rope_theta` + `rope_scaling {type|rope_type, factor, ...}`,
 * or 5.x `rope_parameters {rope_theta, rope_type, factor, ...}`.
 */
function parseRope(file: string, json: Record<string, unknown>): { theta: number; scaling: RopeScaling } {
  const params = json.rope_parameters ?? json.rope_scaling;
  const field = json.rope_parameters !== undefined && json.rope_parameters !== null ? 'rope_parameters' : 'rope_scaling';
  let theta = typeof json.rope_theta === 'number' ? json.rope_theta : 10000;
  if (params === undefined || params === null) return { theta, scaling: { type: 'default', factor: 1 } };
  if (typeof params !== 'object' || Array.isArray(params)) throw new FormatError(file, `field "${field}" is not an object`);
  const p = params as Record<string, unknown>;
  if (typeof p.rope_theta === 'number') theta = p.rope_theta;
  if (!(theta > 0)) throw new FormatError(file, `field "rope_theta" is ${theta}, expected a positive number`);
  const type = p.rope_type ?? p.type ?? 'default';
  const num = (k: string): number => {
    const v = p[k];
    if (typeof v !== 'number' || !(v > 0))
      throw new FormatError(file, `field "${field}.${k}" is ${JSON.stringify(v)}; rope type "${String(type)}" needs a positive number`);
    return v;
  };
  switch (type) {
    case 'default':
      return { theta, scaling: { type: 'default', factor: 1 } };
    case 'linear':
      return { theta, scaling: { type: 'linear', factor: num('factor') } };
    case 'llama3': {
      const scaling: RopeScaling = {
        type: 'llama3',
        factor: num('factor'),
        low_freq_factor: num('low_freq_factor'),
        high_freq_factor: num('high_freq_factor'),
        original_max_position_embeddings: num('original_max_position_embeddings'),
      };
      if (scaling.high_freq_factor === scaling.low_freq_factor) {
        throw new ConfigError(`${file}: field "${field}": high_freq_factor equals low_freq_factor, which divides by zero in llama3 scaling`);
      }
      return { theta, scaling };
    }
    default:
      throw new ConfigError(`${file}: field "${field}" has rope type ${JSON.stringify(type)}, not supported; supported: default, linear, llama3`);
  }
}

/** Parameter count from the normalised sizes, computed before any allocation to bound memory. */
export function countParams(c: ModelConfig): number {
  const h = c.hiddenSize;
  const emb = c.vocabSize * h;
  const head = c.tieWordEmbeddings ? 0 : c.vocabSize * h;
  let perLayer: number;
  if (c.modelType === 'gpt2') {
    perLayer = 4 * h + h * 3 * h + 3 * h + h * h + h + 2 * h * c.intermediateSize + c.intermediateSize + h;
    return emb + c.maxPositions * h + c.numLayers * perLayer + 2 * h;
  }
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  perLayer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * c.intermediateSize;
  return emb + head + c.numLayers * perLayer + h;
}

/**
 * Normalises a parsed `config.json`. `file` names the source in every error.
 * @throws FormatError for a missing or mistyped field, ConfigError for an unsupported or impossible model.
 */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FormatError(file, 'is not a JSON object');
  const raw = json as Record<string, unknown>;
  const f = new FieldReader(file, raw);
  const mt = raw.model_type;
  if (typeof mt !== 'string') throw new FormatError(file, `missing field "model_type" (expected one of gpt2, llama, mistral, qwen2)`);
  let modelType: ModelType;
  if (mt === 'gpt2') modelType = 'gpt2';
  else if (LLAMA_FAMILY.has(mt)) modelType = 'llama';
  else throw new ConfigError(`${file}: field "model_type" is "${mt}", not supported; supported: gpt2, llama, mistral, qwen2`);

  const vocabSize = f.int(['vocab_size']);
  const hiddenSize = f.int(['hidden_size', 'n_embd']);
  const numLayers = f.int(['num_hidden_layers', 'n_layer']);
  const numHeads = f.int(['num_attention_heads', 'n_head']);
  const gpt2 = modelType === 'gpt2';
  const numKvHeads = gpt2 ? numHeads : f.int(['num_key_value_heads'], numHeads);
  const explicitHeadDim = gpt2 ? undefined : pick(raw, ['head_dim']);
  const headDim = explicitHeadDim ? f.int(['head_dim']) : hiddenSize / numHeads;
  if (!explicitHeadDim && !Number.isInteger(headDim)) {
    throw new ConfigError(`${file}: field "${gpt2 ? 'n_head' : 'num_attention_heads'}" = ${numHeads} does not divide the hidden size ${hiddenSize}`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${file}: field "num_key_value_heads" = ${numKvHeads} does not divide num_attention_heads = ${numHeads}`);
  }
  if (!gpt2 && headDim % 2 !== 0) throw new ConfigError(`${file}: head dimension ${headDim} is odd; RoPE rotates halves and needs it even`);
  const intermediateSize = gpt2 ? f.int(['n_inner'], 4 * hiddenSize) : f.int(['intermediate_size']);
  const maxPositions = f.int(['max_position_embeddings', 'n_positions'], gpt2 ? 1024 : 2048);
  const normEps = f.num(gpt2 ? ['layer_norm_epsilon'] : ['rms_norm_eps'], gpt2 ? 1e-5 : 1e-6);
  const tieWordEmbeddings = f.bool(['tie_word_embeddings'], gpt2);
  const actField = gpt2 ? 'activation_function' : 'hidden_act';
  const activation = parseActivation(file, actField, f.str([actField], gpt2 ? 'gelu_new' : 'silu'));
  const rope = gpt2 ? { theta: 10000, scaling: { type: 'default', factor: 1 } as RopeScaling } : parseRope(file, raw);
  const qwen2 = mt === 'qwen2';
  const attentionBias = qwen2 ? true : f.bool(['attention_bias'], false);
  const attentionOutBias = qwen2 ? false : attentionBias;
  const mlpBias = f.bool(['mlp_bias'], false);
  let slidingWindow: number | null = null;
  if (mt === 'mistral' && pick(raw, ['sliding_window'])) slidingWindow = f.int(['sliding_window']);
  if (qwen2 && f.bool(['use_sliding_window'], false)) {
    throw new ConfigError(
      `${file}: field "use_sliding_window" is true; Qwen2's per-layer sliding window is not supported (set it false for sequences shorter than the window)`,
    );
  }

  const config: ModelConfig = {
    modelType,
    sourceModelType: mt,
    vocabSize,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize,
    maxPositions,
    normEps,
    tieWordEmbeddings,
    activation,
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    attentionBias,
    attentionOutBias,
    mlpBias,
    slidingWindow,
    scaleAttnByInverseLayerIdx: gpt2 && f.bool(['scale_attn_by_inverse_layer_idx'], false),
    raw,
  };
  const n = countParams(config);
  if (n > MAX_PARAMS) {
    throw new ConfigError(
      `${file}: the sizes (vocab_size ${vocabSize}, hidden ${hiddenSize}, ${numLayers} layers, intermediate ${intermediateSize}) give ${n.toExponential(3)} parameters, over the limit of 2^34; the config is corrupt or too large for tfjs`,
    );
  }
  return config;
}

/**
 * Refuses a sequence longer than the model's position range, before anything is loaded. GPT-2's learned position
 * table has no row past n_positions; a Llama's RoPE would compute at any length, but past max_position_embeddings
 * the model runs at positions it never saw in training (transformers' own limit), so it is refused as GPT-2 is.
 * `role` names the model in the message ("the student", "the teacher"), `file` its config.json.
 */
export function checkSequenceLength(c: ModelConfig, seqLength: number, role: string, file: string): void {
  if (seqLength <= c.maxPositions) return;
  const field = c.modelType === 'gpt2' ? 'n_positions' : 'max_position_embeddings';
  const why = c.modelType === 'gpt2' ? "GPT-2's learned position table has no row past it" : 'RoPE would run at positions the model never saw in training';
  throw new ConfigError(
    `--seq_length ${seqLength} is longer than ${role}'s ${field} ${c.maxPositions} (${file}): ${why}. Use --seq_length ${c.maxPositions} or less${c.modelType === 'gpt2' ? '' : `, or raise ${field} (with rope_scaling) in config.json if the model was trained for longer contexts`}.`,
  );
}
