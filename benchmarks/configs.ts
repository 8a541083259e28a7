/**
 * Benchmark shapes. They live in configs.json so that the PyTorch peer (benchmarks/peer/kd_step.py) reads the very
 * same numbers; this module types them, derives the Hugging Face config.json of each model, and builds the scaling
 * sweeps. A shape travels to the peer whole (`--spec`), so a sweep point needs no entry in the file.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../src/errors.ts';

export interface ModelShape {
  hidden: number;
  layers: number;
  heads: number;
}

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

export type ConfigName = 'tiny' | 'S' | 'M' | 'L';
export const CONFIG_NAMES: readonly ConfigName[] = ['tiny', 'S', 'M', 'L'];

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

/** The Hugging Face config.json of one side; the student ties its embeddings, the teacher keeps its own lm_head. */
export function llamaConfigJson(shape: BenchShape, role: 'student' | 'teacher'): Record<string, unknown> {
  const m = shape[role];
  if (m.hidden % m.heads !== 0 || (m.hidden / m.heads) % 2 !== 0) {
    throw new ConfigError(`bench: ${role} hidden ${m.hidden} must split into ${m.heads} heads of even size (RoPE rotates halves)`);
  }
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: shape.vocab,
    hidden_size: m.hidden,
    num_hidden_layers: m.layers,
    num_attention_heads: m.heads,
    num_key_value_heads: m.heads,
    intermediate_size: intermediateSize(m.hidden),
    max_position_embeddings: shape.seq,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    hidden_act: 'silu',
    tie_word_embeddings: role === 'student',
    torch_dtype: 'float32',
  };
}

/** Tokens that one optimizer step trains on. */
export function tokensPerStep(shape: BenchShape): number {
  return shape.batch * shape.seq;
}

/** Parameter count of one side (embedding, layers, final norm, untied head), for the results table. */
export function paramCount(shape: BenchShape, role: 'student' | 'teacher'): number {
  const m = shape[role];
  const h = m.hidden;
  const perLayer = 2 * h + 4 * h * h + 3 * h * intermediateSize(h);
  const head = role === 'student' ? 0 : shape.vocab * h;
  return shape.vocab * h + head + m.layers * perLayer + h;
}

export interface ScalingPoint {
  axis: 'seq' | 'vocab' | 'width';
  /** The value on the chart's x axis: sequence length, vocabulary size, or student hidden size. */
  x: number;
  shape: BenchShape;
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
      shape: at({
        student: { ...base.student, hidden, heads: hidden / 64 },
        teacher: { ...base.teacher, hidden: 2 * hidden, heads: (2 * hidden) / 64 },
      }),
    });
  }
  return pts;
}
