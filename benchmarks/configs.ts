/**
 * Benchmark shapes. They live in configs.json so that the PyTorch peer (benchmarks/peer/kd_step.py) reads the very
 * same numbers; this module types them, derives the Hugging Face config.json of each model, and builds the scaling
 * sweeps. A shape travels to the peer whole (`--spec`), so a sweep point needs no entry in the file.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../src/errors.ts';
import { countParams, parseModelConfig } from '../src/model/config.ts';

export interface ModelShape {
  hidden: number;
  layers: number;
  heads: number;
  /** Key/value heads of grouped-query attention; default `heads` (plain multi-head attention). */
  kvHeads?: number;
  /** SwiGLU width; default intermediateSize(hidden), Llama's 8/3 rule. */
  intermediate?: number;
  /** The embedding doubles as the lm_head; default true for the student, false for the teacher. */
  tied?: boolean;
  /** RoPE base; default 10000. */
  ropeTheta?: number;
}

/** One side's shape with every default applied: what both our model and the peer build. */
export type ResolvedModelShape = Required<ModelShape>;

export interface BenchShape {
  vocab: number;
  seq: number;
  /** Sequences per optimizer step; one micro-batch per step, as the peer does it. */
  batch: number;
  student: ModelShape;
  teacher: ModelShape;
  /** Default measured steps and warm-up steps (overridable with --steps / --warmup). */
  steps: number;
  warmup: number;
}

export type Role = 'student' | 'teacher';

export type ConfigName = 'tiny' | 'S' | 'M' | 'L' | 'qwen2.5-0.5B-from-1.5B';
/** Smallest first: the results table lists configurations in this order. */
export const CONFIG_NAMES: readonly ConfigName[] = ['tiny', 'S', 'M', 'L', 'qwen2.5-0.5B-from-1.5B'];

const CONFIGS_FILE = new URL('./configs.json', import.meta.url);

export function loadConfigs(): Record<ConfigName, BenchShape> {
  const parsed = JSON.parse(readFileSync(CONFIGS_FILE, 'utf8')) as { configs: Record<ConfigName, BenchShape> };
  return parsed.configs;
}

export function benchShape(name: string): BenchShape {
  const all = loadConfigs();
  if (!(CONFIG_NAMES as readonly string[]).includes(name)) {
    throw new ConfigError(`bench: unknown config "${name}"; known: ${CONFIG_NAMES.join(', ')}`);
  }
  return all[name as ConfigName];
}

/** Llama's SwiGLU width: 8/3 of the hidden size, rounded up to a multiple of 64 (the peer applies the same rule). */
export function intermediateSize(hidden: number): number {
  return Math.ceil((8 * hidden) / 3 / 64) * 64;
}

/**
 * One side with its defaults applied (the peer, benchmarks/peer/kd_step.py, applies the same ones when it reads
 * configs.json itself), checked so that a bad shape fails here with its name rather than inside the model.
 */
export function resolveModelShape(shape: BenchShape, role: Role): ResolvedModelShape {
  const m = shape[role];
  const r: ResolvedModelShape = {
    hidden: m.hidden,
    layers: m.layers,
    heads: m.heads,
    kvHeads: m.kvHeads ?? m.heads,
    intermediate: m.intermediate ?? intermediateSize(m.hidden),
    tied: m.tied ?? role === 'student',
    ropeTheta: m.ropeTheta ?? 10000,
  };
  if (r.hidden % r.heads !== 0 || (r.hidden / r.heads) % 2 !== 0) {
    throw new ConfigError(`bench: ${role} hidden ${r.hidden} must split into ${r.heads} heads of even size (RoPE rotates halves)`);
  }
  if (!Number.isInteger(r.kvHeads) || r.kvHeads < 1 || r.heads % r.kvHeads !== 0) {
    throw new ConfigError(`bench: ${role} kvHeads ${r.kvHeads} must divide heads ${r.heads} (each key/value head serves a whole group of query heads)`);
  }
  if (!Number.isInteger(r.intermediate) || r.intermediate < 1)
    throw new ConfigError(`bench: ${role} intermediate ${r.intermediate} must be a positive integer`);
  if (!(r.ropeTheta > 0)) throw new ConfigError(`bench: ${role} ropeTheta ${r.ropeTheta} must be positive`);
  return r;
}

/** The shape with both sides resolved: what the peer is given (--spec), so that it applies no default of its own. */
export function resolveBenchShape(shape: BenchShape): BenchShape {
  return { ...shape, student: resolveModelShape(shape, 'student'), teacher: resolveModelShape(shape, 'teacher') };
}

/**
 * The Hugging Face config.json of one side, as Llama: Qwen2 shapes load as Llama without Qwen2's q/k/v biases, which
 * the peer leaves out too.
 */
export function llamaConfigJson(shape: BenchShape, role: Role): Record<string, unknown> {
  const m = resolveModelShape(shape, role);
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: shape.vocab,
    hidden_size: m.hidden,
    num_hidden_layers: m.layers,
    num_attention_heads: m.heads,
    num_key_value_heads: m.kvHeads,
    intermediate_size: m.intermediate,
    max_position_embeddings: shape.seq,
    rms_norm_eps: 1e-6,
    rope_theta: m.ropeTheta,
    hidden_act: 'silu',
    tie_word_embeddings: m.tied,
    torch_dtype: 'float32',
  };
}

/** Tokens that one optimizer step trains on. */
export function tokensPerStep(shape: BenchShape): number {
  return shape.batch * shape.seq;
}

/** Parameter count of one side (embedding, layers, final norm, head unless tied), counted by the model's own rule. */
export function paramCount(shape: BenchShape, role: Role): number {
  return countParams(parseModelConfig(llamaConfigJson(shape, role), `<bench ${role}>`));
}

export interface ScalingPoint {
  axis: 'seq' | 'vocab' | 'width';
  /** The value on the chart's x axis: sequence length, vocabulary size, or student hidden size. */
  x: number;
  shape: BenchShape;
}

/** A side at another width: heads of 64, and the widths that follow the hidden size (kv heads, SwiGLU) back to their defaults. */
function widthPoint(m: ModelShape, hidden: number): ModelShape {
  return {
    hidden,
    layers: m.layers,
    heads: hidden / 64,
    ...(m.tied !== undefined ? { tied: m.tied } : {}),
    ...(m.ropeTheta !== undefined ? { ropeTheta: m.ropeTheta } : {}),
  };
}

/**
 * Sweeps from S along one axis at a time. Width grows student and teacher together (teacher stays 2× wider) with a
 * head size of 64, so that only the matmul widths change. Each point runs few steps: the sweep shows a trend.
 */
export function scalingPoints(base: BenchShape, steps: number, warmup: number): ScalingPoint[] {
  const pts: ScalingPoint[] = [];
  const at = (patch: Partial<BenchShape>): BenchShape => ({ ...base, ...patch, steps, warmup });
  for (const seq of [128, 256, 512]) pts.push({ axis: 'seq', x: seq, shape: at({ seq }) });
  for (const vocab of [4096, 8192, 16384]) pts.push({ axis: 'vocab', x: vocab, shape: at({ vocab }) });
  for (const hidden of [128, 256, 384]) {
    pts.push({
      axis: 'width',
      x: hidden,
      shape: at({ student: widthPoint(base.student, hidden), teacher: widthPoint(base.teacher, 2 * hidden) }),
    });
  }
  return pts;
}
