/**
 * The benchmark shapes: the optional per-side fields (kvHeads, intermediate, tied, ropeTheta) reach the model's
 * config.json, the existing configurations keep their old defaults, and the Qwen configuration is Qwen2.5-0.5B and
 * Qwen2.5-1.5B as Hugging Face publishes them (sizes from their config.json files, totals from their model cards).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { benchShape, CONFIG_NAMES, llamaConfigJson, paramCount, resolveBenchShape, scalingPoints, type BenchShape } from '../../benchmarks/configs.ts';
import { ConfigError } from '../../src/errors.ts';

const QWEN = 'qwen2.5-0.5B-from-1.5B';

/** The fields of Qwen/Qwen2.5-0.5B's and Qwen/Qwen2.5-1.5B's config.json that decide the shapes. */
const HF = {
  student: {
    vocab_size: 151936,
    hidden_size: 896,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    intermediate_size: 4864,
    tie_word_embeddings: true,
    rope_theta: 1000000,
  },
  teacher: {
    vocab_size: 151936,
    hidden_size: 1536,
    num_hidden_layers: 28,
    num_attention_heads: 12,
    num_key_value_heads: 2,
    intermediate_size: 8960,
    tie_word_embeddings: true,
    rope_theta: 1000000,
  },
} as const;

test('the Qwen configuration derives the config.json fields of Qwen2.5-0.5B (student) and Qwen2.5-1.5B (teacher)', () => {
  const shape = benchShape(QWEN);
  assert.deepEqual([shape.vocab, shape.seq, shape.batch], [151936, 8192, 1]);
  for (const role of ['student', 'teacher'] as const) {
    const json = llamaConfigJson(shape, role);
    for (const [k, v] of Object.entries(HF[role])) assert.equal(json[k], v, `${role} ${k}`);
  }
  assert.ok(CONFIG_NAMES.includes(QWEN), 'a --config choice');
});

test('parameter counts are Qwen2.5-0.5B and -1.5B less their q/k/v biases (0.49 B and 1.54 B on the model cards)', () => {
  const shape = benchShape(QWEN);
  // The model cards: 0.49 B (0.36 B non-embedding) and 1.54 B (1.31 B non-embedding), embeddings tied. The exact
  // totals of the checkpoints include Qwen2's q/k/v biases, which both benchmark sides leave out.
  const card = { student: { total: 494_032_768, b: 0.49, nonEmbedding: 0.36 }, teacher: { total: 1_543_714_304, b: 1.54, nonEmbedding: 1.31 } };
  for (const role of ['student', 'teacher'] as const) {
    const hf = HF[role];
    const headDim = hf.hidden_size / hf.num_attention_heads;
    const biases = hf.num_hidden_layers * (hf.num_attention_heads + 2 * hf.num_key_value_heads) * headDim;
    const n = paramCount(shape, role);
    assert.equal(n + biases, card[role].total, `${role}: ${n} + ${biases} biases`);
    assert.equal(Math.round(n / 1e7) / 100, card[role].b, `${role} in billions`);
    assert.equal(Math.round((n - hf.vocab_size * hf.hidden_size) / 1e7) / 100, card[role].nonEmbedding, `${role} non-embedding`);
  }
});

test('configurations without the new fields keep their shapes: kv heads = heads, the 8/3 SwiGLU rule, student tied, RoPE 10000', () => {
  const m = benchShape('M');
  const student = llamaConfigJson(m, 'student');
  const teacher = llamaConfigJson(m, 'teacher');
  assert.deepEqual([student.num_key_value_heads, student.intermediate_size, student.tie_word_embeddings, student.rope_theta], [12, 2048, true, 10000]);
  assert.deepEqual([teacher.num_key_value_heads, teacher.intermediate_size, teacher.tie_word_embeddings, teacher.rope_theta], [24, 4096, false, 10000]);
  // S student, counted by hand: embedding 8192·256, 4 layers of (2 norms + q,k,v,o + SwiGLU 3·256·704), final norm.
  assert.equal(paramCount(benchShape('S'), 'student'), 8192 * 256 + 4 * (2 * 256 + 4 * 256 * 256 + 3 * 256 * 704) + 256);
});

test('the peer is given every side resolved, the same sizes as our config.json', () => {
  const r = resolveBenchShape(benchShape('S'));
  assert.deepEqual(r.student, { hidden: 256, layers: 4, heads: 4, kvHeads: 4, intermediate: 704, tied: true, ropeTheta: 10000 });
  assert.deepEqual(r.teacher, { hidden: 512, layers: 8, heads: 8, kvHeads: 8, intermediate: 1408, tied: false, ropeTheta: 10000 });
});

test('a shape whose kv heads do not divide its heads fails with the side and the field named', () => {
  const bad: BenchShape = { ...benchShape('tiny'), student: { hidden: 32, layers: 1, heads: 4, kvHeads: 3 } };
  assert.throws(
    () => llamaConfigJson(bad, 'student'),
    (e: unknown) => e instanceof ConfigError && /student kvHeads 3 must divide heads 4/.test(e.message),
  );
});

test('the width sweep from a GQA configuration gives the widths that follow the hidden size back to their defaults', () => {
  const width = scalingPoints(benchShape(QWEN), 2, 1).filter((p) => p.axis === 'width');
  assert.equal(width.length, 3);
  for (const p of width) {
    const json = llamaConfigJson(p.shape, 'student');
    assert.equal(json.num_key_value_heads, json.num_attention_heads, `kv heads at width ${p.x}`);
    assert.equal(json.intermediate_size, Math.ceil((8 * p.x) / 3 / 64) * 64);
    assert.equal(json.rope_theta, 1000000, 'RoPE base kept');
    assert.equal(llamaConfigJson(p.shape, 'teacher').tie_word_embeddings, true, "the teacher's tying kept");
  }
});
