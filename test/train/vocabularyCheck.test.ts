/**
 * Teacher/student vocabularies: equal sizes share all ids; padding-sized differences (Qwen's 152,064 vs 151,936)
 * align on the shared ids and say so; sizes further apart (another tokenizer) are refused before training.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { alignVocabularies } from '../../src/train/vocabularyCheck.ts';
import { parseModelConfig, type ModelConfig } from '../../src/model/config.ts';
import { ConfigError } from '../../src/errors.ts';

const llama = (vocab: number): ModelConfig =>
  parseModelConfig(
    { model_type: 'llama', vocab_size: vocab, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1 },
    'config.json',
  );
const where = { teacherPath: 'teacher/', studentPath: 'student/' };

test('equal vocabularies share every id; padded ones align on the shared ids and say so', () => {
  assert.match(alignVocabularies(llama(1000), llama(1000), where), /share 1000 ids/);
  assert.match(alignVocabularies(llama(152064), llama(151936), where), /uses the 151936 shared ids/);
});

test('vocabularies far apart (another tokenizer) are refused, naming both models', () => {
  assert.throws(
    () => alignVocabularies(llama(32000), llama(151936), where),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match((e as Error).message, /teacher \(teacher\/\) has 32000 .* student \(student\/\) 151936/);
      return true;
    },
  );
});
