/**
 * Checkpoints that must not load, each failing with its error class and a message that names the file and the
 * tensor or field: missing and extra tensors, wrong shapes, truncated and malformed safetensors, pickled weights.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../../src/checkpoint/load.ts';
import { CheckpointError, ConfigError, DistillError, FormatError } from '../../src/errors.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { tf } from '../helpers/backends.ts';
import { fixture } from '../helpers/fixtures.ts';
import { checkpointVariant, scratchDir } from '../model/checkpointVariant.ts';

/** A checkpoint directory with the fixture's config and `bytes` as model.safetensors. */
function rawVariant(bytes: Uint8Array): string {
  const dir = scratchDir('raw');
  copyFileSync(fixture('llama-student', 'config.json'), join(dir, 'config.json'));
  writeFileSync(join(dir, 'model.safetensors'), bytes);
  return dir;
}

async function assertLoadFails(dir: string, cls: new (...args: never[]) => DistillError, ...words: string[]): Promise<void> {
  const before = tf.memory().numTensors;
  await assert.rejects(loadModel(dir, { trainable: true }), (e: Error) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
    for (const w of words) assert.ok(e.message.includes(w), `message should name "${w}": ${e.message}`);
    return true;
  });
  assert.equal(tf.memory().numTensors, before, 'a failed load leaves no variables behind');
}

test.before(async () => {
  await selectBackend('cpu', { log: null });
});

test('a missing tensor names the file and the tensor', async () => {
  const dir = checkpointVariant('llama-student', (ts) => ts.filter((t) => t.name !== 'model.layers.0.mlp.up_proj.weight'));
  await assertLoadFails(dir, CheckpointError, join(dir, 'model.safetensors'), 'model.layers.0.mlp.up_proj.weight', '[80,32]');
});

test('a wrong shape names the tensor, the shape found and the shape required', async () => {
  const dir = checkpointVariant('gpt2-tiny', (ts) => ts.map((t) => (t.name === 'transformer.h.1.attn.c_attn.weight' ? { ...t, shape: [144, 48] } : t)));
  await assertLoadFails(dir, CheckpointError, join(dir, 'model.safetensors'), 'transformer.h.1.attn.c_attn.weight', '[144,48]', '[48,144]');
});

test('a config that disagrees with the weights (intermediate_size) fails on the first misshapen tensor', async () => {
  const dir = checkpointVariant(
    'llama-student',
    (ts) => ts,
    (c) => ({ ...c, intermediate_size: 96 }),
  );
  await assertLoadFails(dir, CheckpointError, 'mlp.', '[80,32]', '[96,32]', 'config.json');
});

test('an unexpected extra tensor is an error; GPT-2 mask buffers and rotary inv_freq are ignored', async () => {
  const extra = checkpointVariant('llama-student', (ts) => [
    ...ts,
    { name: 'model.layers.0.self_attn.q_norm.weight', dtype: 'F32', shape: [16], data: new Float32Array(16) },
  ]);
  await assertLoadFails(extra, CheckpointError, 'model.layers.0.self_attn.q_norm.weight', 'unexpected');
  const buffers = checkpointVariant('gpt2-tiny', (ts) => [
    ...ts,
    { name: 'transformer.h.0.attn.bias', dtype: 'F32', shape: [1, 1, 4, 4], data: new Float32Array(16) },
    { name: 'transformer.h.0.attn.masked_bias', dtype: 'F32', shape: [], data: new Float32Array(1) },
  ]);
  (await loadModel(buffers, { trainable: false })).dispose();
  const rotary = checkpointVariant('llama-student', (ts) => [
    ...ts,
    { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [8], data: new Float32Array(8) },
  ]);
  (await loadModel(rotary, { trainable: false })).dispose();
});

test('base-model files without the model./transformer. prefix load, as transformers accepts them', async () => {
  const llama = checkpointVariant('llama-student', (ts) => ts.map((t) => ({ ...t, name: t.name.replace(/^model\./, '') })));
  (await loadModel(llama, { trainable: false })).dispose();
  const gpt2 = checkpointVariant('gpt2-tiny', (ts) => ts.map((t) => ({ ...t, name: t.name.replace(/^transformer\./, '') })));
  (await loadModel(gpt2, { trainable: false })).dispose();
});

test('a truncated file is a FormatError naming the file', async () => {
  const bytes = readFileSync(fixture('llama-student', 'model.safetensors'));
  const dir = rawVariant(bytes.subarray(0, bytes.length - 100));
  await assertLoadFails(dir, FormatError, join(dir, 'model.safetensors'), 'truncated');
  const tiny = rawVariant(bytes.subarray(0, 5));
  await assertLoadFails(tiny, FormatError, join(tiny, 'model.safetensors'), 'truncated');
});

test('a header length over 100,000,000 is refused before allocating', async () => {
  const b = Buffer.alloc(64);
  b.writeBigUInt64LE(100_000_001n);
  const dir = rawVariant(b);
  await assertLoadFails(dir, FormatError, join(dir, 'model.safetensors'), '100000001', '100000000');
  b.writeBigUInt64LE(2n ** 63n);
  await assertLoadFails(rawVariant(b), FormatError, 'header length');
});

test('offsets with a gap between tensors are a FormatError naming the tensor', async () => {
  const header = JSON.stringify({
    'model.norm.weight': { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    'model.embed_tokens.weight': { dtype: 'F32', shape: [2], data_offsets: [12, 20] },
  });
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  const dir = rawVariant(Buffer.concat([len, Buffer.from(header), Buffer.alloc(20)]));
  await assertLoadFails(dir, FormatError, join(dir, 'model.safetensors'), 'model.embed_tokens.weight', 'gap');
});

test('unknown model_type and a vocab of 2^40 fail on config.json, naming file and field', async () => {
  const bert = checkpointVariant(
    'llama-student',
    (ts) => ts,
    (c) => ({ ...c, model_type: 'bert' }),
  );
  await assertLoadFails(bert, ConfigError, join(bert, 'config.json'), 'model_type', 'bert');
  const huge = checkpointVariant(
    'llama-student',
    (ts) => ts,
    (c) => ({ ...c, vocab_size: 2 ** 40 }),
  );
  await assertLoadFails(huge, ConfigError, join(huge, 'config.json'), 'vocab_size');
});

test('pickled PyTorch weights are refused with the conversion command', async () => {
  const dir = scratchDir('pickled');
  copyFileSync(fixture('llama-student', 'config.json'), join(dir, 'config.json'));
  writeFileSync(join(dir, 'pytorch_model.bin'), Buffer.from('PK\x03\x04 not really'));
  await assertLoadFails(dir, CheckpointError, 'pytorch_model.bin', 'save_pretrained', 'safe_serialization=True', dir);
});

test('a directory without config.json says what a checkpoint directory holds', async () => {
  const dir = scratchDir('empty');
  await assertLoadFails(dir, CheckpointError, dir, 'config.json');
});
