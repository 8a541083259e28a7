/**
 * config.json parsing: Hugging Face aliases, family mapping, and the errors a bad config must raise before any
 * allocation, each naming the file and the field.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ConfigError, FormatError } from '../../src/errors.ts';
import { checkSequenceLength, countParams, parseModelConfig } from '../../src/model/config.ts';
import { fixture } from '../helpers/fixtures.ts';

const FILE = '/ckpt/config.json';
const read = (name: string): Record<string, unknown> => JSON.parse(readFileSync(fixture(name, 'config.json'), 'utf8')) as Record<string, unknown>;

test('gpt2-tiny config: n_* aliases, n_inner null → 4·hidden, tied head, gelu_new', () => {
  const c = parseModelConfig(read('gpt2-tiny'), FILE);
  assert.equal(c.modelType, 'gpt2');
  assert.deepEqual(
    [c.vocabSize, c.hiddenSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize, c.maxPositions],
    [1000, 48, 2, 3, 3, 16, 192, 64],
  );
  assert.equal(c.normEps, 1e-5);
  assert.equal(c.tieWordEmbeddings, true);
  assert.equal(c.activation, 'gelu_new');
  assert.equal(c.raw.summary_type, 'cls_index', 'raw keeps every field');
});

test('llama-teacher config: GQA, head_dim, untied, rope_parameters', () => {
  const c = parseModelConfig(read('llama-teacher'), FILE);
  assert.equal(c.modelType, 'llama');
  assert.deepEqual([c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize], [4, 2, 16, 160]);
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.ropeScaling.type, 'default');
  assert.equal(c.normEps, 1e-6);
});

test('mistral and qwen2 map to the llama family; qwen2 has q/k/v biases but no o bias', () => {
  const base = read('llama-student');
  const m = parseModelConfig({ ...base, model_type: 'mistral', sliding_window: 4096 }, FILE);
  assert.equal(m.modelType, 'llama');
  assert.equal(m.slidingWindow, 4096);
  const q = parseModelConfig({ ...base, model_type: 'qwen2', attention_bias: undefined }, FILE);
  assert.equal(q.modelType, 'llama');
  assert.equal(q.attentionBias, true);
  assert.equal(q.attentionOutBias, false);
  const l = parseModelConfig({ ...base, attention_bias: true }, FILE);
  assert.equal(l.attentionBias && l.attentionOutBias, true);
});

/** Asserts the error class and that the message names the file and each given word (field names). */
function assertRejects(json: unknown, cls: typeof ConfigError | typeof FormatError, ...words: string[]): void {
  assert.throws(
    () => parseModelConfig(json, FILE),
    (e: Error) => {
      assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
      assert.ok(e.message.includes(FILE), `message names the file: ${e.message}`);
      for (const w of words) assert.ok(e.message.includes(w), `message names "${w}": ${e.message}`);
      return true;
    },
  );
}

test('unknown model_type is a ConfigError naming the type and the field', () => {
  assertRejects({ ...read('llama-student'), model_type: 'bert' }, ConfigError, 'model_type', 'bert');
});

test('vocab 2^40 is rejected before anything is allocated', () => {
  assertRejects({ ...read('llama-student'), vocab_size: 2 ** 40 }, ConfigError, 'vocab_size');
  assertRejects({ ...read('gpt2-tiny'), vocab_size: 2 ** 40 }, ConfigError, 'vocab_size');
});

test('sizes that pass the per-dimension bound but total over 2^34 parameters are rejected', () => {
  const huge = { ...read('llama-student'), vocab_size: 2 ** 23, hidden_size: 2 ** 12, num_attention_heads: 32, num_key_value_heads: 32 };
  assert.ok(countParams(parseModelConfig({ ...huge, vocab_size: 1000 }, FILE)) < 2 ** 34);
  assertRejects(huge, ConfigError, 'vocab_size', '2^34');
});

test('heads not dividing hidden, kv heads not dividing heads', () => {
  const { head_dim: _hd, ...noHeadDim } = read('llama-student');
  assertRejects({ ...noHeadDim, num_attention_heads: 3 }, ConfigError, 'num_attention_heads');
  assertRejects({ ...read('gpt2-tiny'), n_head: 5 }, ConfigError, 'n_head');
  assertRejects({ ...read('llama-teacher'), num_key_value_heads: 3 }, ConfigError, 'num_key_value_heads');
});

test('missing or mistyped fields are FormatErrors naming the field', () => {
  const { vocab_size: _v, ...noVocab } = read('llama-student');
  assertRejects(noVocab, FormatError, 'vocab_size');
  const { n_layer: _l, ...noLayers } = read('gpt2-tiny');
  assertRejects(noLayers, FormatError, 'num_hidden_layers', 'n_layer');
  assertRejects({ ...read('llama-student'), hidden_size: '32' }, FormatError, 'hidden_size');
  assertRejects({ ...read('llama-student'), model_type: undefined }, FormatError, 'model_type');
  assertRejects([1, 2], FormatError);
});

test('unsupported rope types and incomplete llama3 scaling are named', () => {
  assertRejects({ ...read('llama-student'), rope_parameters: { rope_theta: 1e4, rope_type: 'yarn', factor: 2 } }, ConfigError, 'rope_parameters', 'yarn');
  assertRejects({ ...read('llama-student'), rope_parameters: { rope_theta: 1e4, rope_type: 'llama3', factor: 8 } }, FormatError, 'low_freq_factor');
});

test('checkSequenceLength: up to the position range is accepted, one past it is refused naming the field and the file', () => {
  const llama = parseModelConfig(read('llama-student'), FILE);
  const gpt2 = parseModelConfig(read('gpt2-tiny'), FILE);
  checkSequenceLength(llama, 128, 'the student', FILE);
  checkSequenceLength(gpt2, 64, 'the teacher', FILE);
  assert.throws(
    () => checkSequenceLength(llama, 129, 'the student', FILE),
    (e: unknown) =>
      e instanceof ConfigError &&
      /--seq_length 129 is longer than the student's max_position_embeddings 128 \(\/ckpt\/config\.json\).*raise max_position_embeddings/.test(e.message),
  );
  assert.throws(
    () => checkSequenceLength(gpt2, 65, 'the teacher', FILE),
    (e: unknown) => e instanceof ConfigError && /the teacher's n_positions 64 .*Use --seq_length 64 or less\.$/.test(e.message),
  );
});
