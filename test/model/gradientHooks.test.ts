/**
 * CausalLM.withGradientHooks (ops/gradientHook.ts), on each backend, for the fixture models (GPT-2 with its head
 * tied to the embedding, Llama student): each trainable parameter's hook fires exactly once, with the gradient
 * that tf.variableGrads gives without hooks (bit for bit: the hook adds no arithmetic), the gradients returned are
 * unchanged, the last layer's fire before the first layer's (what lets a bucket's all-reduce start during the
 * backward pass), and nothing is left behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';

const CASES = [
  { name: 'gpt2-tiny', first: 'transformer.h.0.attn.c_attn.weight', last: 'transformer.h.1.attn.c_attn.weight', tied: 'transformer.wte.weight' },
  { name: 'llama-student', first: 'model.layers.0.self_attn.q_proj.weight', last: 'model.layers.1.self_attn.q_proj.weight', tied: null },
];

for (const { name, first, last, tied } of CASES) {
  test(`${name}: every parameter's gradient hook fires once, last layer first, with tfjs's own gradient, on each backend`, async () => {
    const ids = readAllSafetensors(fixture(name, 'expected.safetensors')).get('input_ids')!;
    const [b, t] = ids.shape;
    await onEachBackend(async (backend) => {
      const model = await loadModel(fixture(name), { trainable: true });
      assert.ok(model.withGradientHooks, 'the transformer models offer gradient hooks');
      if (tied) assert.equal(model.config.tieWordEmbeddings, true, `${name} is the tied fixture`);
      const idsT = tf.tensor2d(ids.data as Int32Array, [b, t], 'int32');
      const nameOf = new Map([...model.params].map(([n, v]) => [v.name, n]));
      const loss = (): tf.Scalar => tf.tidy(() => tf.mean(tf.square(model.logits(idsT))) as tf.Scalar);
      const plain = tf.variableGrads(loss, model.trainableVariables());

      const before = tf.memory().numTensors;
      const fired: { name: string; grad: tf.Tensor }[] = [];
      // Kept views of what the hook saw, read after the pass (webgpu in Node has no synchronous read).
      const hooked = model.withGradientHooks!(
        (n, g) => fired.push({ name: n, grad: tf.keep(tf.clone(g)) }),
        () => tf.variableGrads(loss, model.trainableVariables()),
      );
      const names = fired.map((f) => f.name);
      assert.deepEqual([...names].sort(), [...model.params.keys()].sort(), `${backend}: one firing per parameter`);
      assert.equal(new Set(names).size, names.length, `${backend}: none fires twice (the tied head and embedding once)`);
      assert.ok(names.indexOf(last) < names.indexOf(first), `${backend}: layer 1's weights are final before layer 0's`);
      const read = async (x: tf.Tensor): Promise<Float32Array> => (await x.data()) as Float32Array;
      for (const f of fired) {
        const want = await read(plain.grads[model.params.get(f.name)!.name]);
        assert.equal(maxAbsDiff(await read(f.grad), want), 0, `${backend}: ${f.name} as the hook saw it`);
      }
      for (const [varName, g] of Object.entries(hooked.grads)) {
        assert.equal(maxAbsDiff(await read(g), await read(plain.grads[varName])), 0, `${backend}: ${nameOf.get(varName)} as returned`);
      }
      assert.equal((await read(hooked.value))[0], (await read(plain.value))[0]);
      tf.dispose([hooked.value, ...Object.values(hooked.grads), ...fired.map((f) => f.grad)]);
      assert.equal(tf.memory().numTensors, before, `${backend}: the hooked views are freed with the pass`);

      // Outside withGradientHooks the model reads its variables as before.
      const again = tf.variableGrads(loss, model.trainableVariables());
      assert.equal(fired.length, names.length, 'no hook fires after the hooked pass');
      tf.dispose([again.value, ...Object.values(again.grads), plain.value, ...Object.values(plain.grads), idsT]);
      model.dispose();
    });
  });
}
