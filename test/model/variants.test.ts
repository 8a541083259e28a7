/**
 * Architecture options the fixtures do not exercise (attention and MLP biases, Qwen2, Mistral's sliding window,
 * an untied GPT-2 head), checked through identities that hold exactly in real arithmetic:
 * - zero biases change nothing;
 * - a v_proj bias b adds b to every attention output (softmax rows sum to 1), so it equals an o_proj bias W_o·b;
 * - a sliding window of w leaves positions < w untouched;
 * - an untied head equal to the embedding gives the tied model's logits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture, maxAbsDiff, relError } from '../helpers/fixtures.ts';
import { checkpointVariant, type F32Tensor } from './checkpointVariant.ts';

const NAME = 'llama-student';
const HIDDEN = 32;
const KV = 16;

async function logitsOf(dir: string): Promise<Float32Array> {
  const ids = readAllSafetensors(fixture(NAME, 'expected.safetensors')).get('input_ids')!;
  const model = await loadModel(dir, { trainable: false });
  const t = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
  const l = model.logits(t);
  const d = (await l.data()) as Float32Array;
  tf.dispose([l, t]);
  model.dispose();
  return d;
}

const bias = (name: string, n: number, fill: (i: number) => number = () => 0): F32Tensor => ({
  name,
  dtype: 'F32',
  shape: [n],
  data: Float32Array.from({ length: n }, (_, i) => fill(i)),
});

const vBias = (i: number): number => Math.sin(i + 1) * 0.5;

test('zero attention/MLP biases (llama attention_bias, mlp_bias; qwen2) leave the logits unchanged', async () => {
  await onEachBackend(async () => {
    const ref = await logitsOf(fixture(NAME));
    const p = 'model.layers.0.';
    const llamaBiased = checkpointVariant(
      NAME,
      (ts) => [
        ...ts,
        bias(`${p}self_attn.q_proj.bias`, HIDDEN),
        bias(`${p}self_attn.k_proj.bias`, KV),
        bias(`${p}self_attn.v_proj.bias`, KV),
        bias(`${p}self_attn.o_proj.bias`, HIDDEN),
        bias(`${p}mlp.gate_proj.bias`, 80),
        bias(`${p}mlp.up_proj.bias`, 80),
        bias(`${p}mlp.down_proj.bias`, HIDDEN),
      ],
      (c) => ({ ...c, attention_bias: true, mlp_bias: true }),
    );
    assert.equal(maxAbsDiff(await logitsOf(llamaBiased), ref), 0);
    const qwen = checkpointVariant(
      NAME,
      (ts) => [...ts, bias(`${p}self_attn.q_proj.bias`, HIDDEN), bias(`${p}self_attn.k_proj.bias`, KV), bias(`${p}self_attn.v_proj.bias`, KV)],
      (c) => ({ ...c, model_type: 'qwen2', attention_bias: undefined }),
    );
    assert.equal(maxAbsDiff(await logitsOf(qwen), ref), 0);
  });
});

test('a Qwen2 v_proj bias b equals a Llama o_proj bias W_o·b', async () => {
  await onEachBackend(async (backend) => {
    const p = 'model.layers.0.self_attn.';
    const wo = readAllSafetensors(fixture(NAME, 'model.safetensors')).get(`${p}o_proj.weight`)!.data;
    // The student has 2 query heads sharing 1 KV head: the attention output repeats b once per query head.
    const repeated = (i: number): number => vBias(i % KV);
    const oBias = (j: number): number => {
      let s = 0;
      for (let i = 0; i < HIDDEN; i++) s += wo[j * HIDDEN + i] * repeated(i);
      return s;
    };
    const qwen = checkpointVariant(
      NAME,
      (ts) => [...ts, bias(`${p}q_proj.bias`, HIDDEN), bias(`${p}k_proj.bias`, KV), bias(`${p}v_proj.bias`, KV, vBias)],
      (c) => ({ ...c, model_type: 'qwen2' }),
    );
    const llama = checkpointVariant(
      NAME,
      (ts) => [...ts, bias(`${p}q_proj.bias`, HIDDEN), bias(`${p}k_proj.bias`, KV), bias(`${p}v_proj.bias`, KV), bias(`${p}o_proj.bias`, HIDDEN, oBias)],
      (c) => ({ ...c, attention_bias: true }),
    );
    const a = await logitsOf(qwen);
    const b = await logitsOf(llama);
    const err = relError(a, b);
    console.log(`v bias vs o bias on ${backend}: relative difference ${err.toExponential(2)}`);
    assert.ok(err < 1e-5, `relative difference ${err}`);
    assert.ok(relError(a, await logitsOf(fixture(NAME))) > 1e-3, 'the bias has an effect');
  });
});

test('a Mistral sliding window w leaves positions < w unchanged and changes later ones', async () => {
  await onEachBackend(async () => {
    const ref = await logitsOf(fixture(NAME));
    const w = 5;
    const mistral = checkpointVariant(
      NAME,
      (ts) => ts,
      (c) => ({ ...c, model_type: 'mistral', sliding_window: w }),
    );
    const got = await logitsOf(mistral);
    const [seq, vocab] = [17, 1000];
    for (let b = 0; b < 2; b++) {
      const row = (x: Float32Array, t: number): Float32Array => x.subarray((b * seq + t) * vocab, (b * seq + t + 1) * vocab);
      for (let t = 0; t < w; t++) assert.equal(maxAbsDiff(row(got, t), row(ref, t)), 0, `position ${t}`);
      assert.ok(maxAbsDiff(row(got, seq - 1), row(ref, seq - 1)) > 1e-4, 'the window cuts the last position off');
    }
    const wide = checkpointVariant(
      NAME,
      (ts) => ts,
      (c) => ({ ...c, model_type: 'mistral', sliding_window: 64 }),
    );
    assert.equal(maxAbsDiff(await logitsOf(wide), ref), 0);
  });
});

test('GPT-2 with an untied lm_head equal to wte gives the tied logits', async () => {
  await onEachBackend(async () => {
    const ids = readAllSafetensors(fixture('gpt2-tiny', 'expected.safetensors'));
    const untied = checkpointVariant(
      'gpt2-tiny',
      (ts) => {
        const wte = ts.find((t) => t.name === 'transformer.wte.weight')!;
        return [...ts, { ...wte, name: 'lm_head.weight', data: wte.data.slice() }];
      },
      (c) => ({ ...c, tie_word_embeddings: false }),
    );
    const model = await loadModel(untied, { trainable: true });
    assert.ok(model.params.has('lm_head.weight'));
    const inp = ids.get('input_ids')!;
    const t = tf.tensor2d(inp.data as Int32Array, inp.shape as [number, number], 'int32');
    const l = model.logits(t);
    const err = relError(await l.data(), ids.get('logits')!.data);
    assert.ok(err <= 1e-5, `relative error ${err}`);
    tf.dispose([l, t]);
    model.dispose();
  });
});
