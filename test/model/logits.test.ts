/**
 * The models against transformers' own output: logits of the reference fixtures on every backend present, to the
 * 1e-5 relative error a correct float32 implementation reaches (the fixtures' float64 check lands at 3e-7).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture, relError } from '../helpers/fixtures.ts';

const MODELS = ['gpt2-tiny', 'llama-teacher', 'llama-student'];

for (const name of MODELS) {
  test(`${name}: logits match transformers to 1e-5 on each backend, without leaking tensors`, async () => {
    const expected = readAllSafetensors(fixture(name, 'expected.safetensors'));
    const ids = expected.get('input_ids')!;
    const ref = expected.get('logits')!;
    await onEachBackend(async (backend) => {
      const before = tf.memory().numTensors;
      const model = await loadModel(fixture(name), { trainable: false });
      const idsT = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
      const logits = model.logits(idsT);
      assert.deepEqual(logits.shape, ref.shape);
      const err = relError(await logits.data(), ref.data);
      // hidden() is the trunk that the losses use: hidden · headᵀ must be the same logits.
      const viaHidden = tf.tidy(() => {
        const h = model.hidden(idsT);
        const [b, t, d] = h.shape;
        return tf.matMul(h.reshape([b * t, d]), model.headWeight(), false, true);
      });
      const errHidden = relError(await viaHidden.data(), ref.data);
      console.log(`${name} on ${backend}: relative error ${err.toExponential(2)} (via hidden ${errHidden.toExponential(2)})`);
      assert.ok(err <= 1e-5, `${name} on ${backend}: relative error ${err}`);
      assert.ok(errHidden <= 1e-5, `${name} on ${backend}: relative error via hidden ${errHidden}`);
      assert.equal(model.trainableVariables().length, 0, 'a model loaded with trainable: false has no trainable variables');
      tf.dispose([logits, viaHidden, idsT]);
      model.dispose();
      assert.equal(tf.memory().numTensors, before, `${name} on ${backend}: tensors leaked`);
    });
  });
}

test('a student loaded trainable exposes every parameter as trainable, under its Hugging Face name', async () => {
  await onEachBackend(async () => {
    const model = await loadModel(fixture('llama-student'), { trainable: true });
    assert.equal(model.trainableVariables().length, model.params.size);
    assert.ok(model.params.has('model.embed_tokens.weight'));
    assert.ok(!model.params.has('lm_head.weight'), 'tied lm_head is not a separate parameter');
    assert.equal(model.headWeight(), model.params.get('model.embed_tokens.weight'));
    model.dispose();
  });
});
