/** Out-of-vocabulary ids fail on the host with the id and its position, before tfjs silently gathers zeros. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { TokenIdError } from '../../src/model/embedding.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture } from '../helpers/fixtures.ts';

test('ids out of vocab name the bad id and its [batch, seq] position, on each model and backend', async () => {
  await onEachBackend(async () => {
    for (const name of ['gpt2-tiny', 'llama-student']) {
      const model = await loadModel(fixture(name), { trainable: false });
      const before = tf.memory().numTensors;
      for (const [bad, at] of [
        [1000, [1, 2]],
        [-1, [0, 4]],
      ] as const) {
        const data = new Int32Array(2 * 6).fill(5);
        data[at[0] * 6 + at[1]] = bad;
        const ids = tf.tensor2d(data, [2, 6], 'int32');
        assert.throws(
          () => model.logits(ids),
          (e: Error) => {
            assert.ok(e instanceof TokenIdError, `${name}: got ${e.constructor.name}: ${e.message}`);
            assert.ok(e.message.includes(`input_ids[${at[0]}, ${at[1]}] = ${bad}`), e.message);
            assert.ok(e.message.includes('[0, 1000)'), e.message);
            return true;
          },
        );
        ids.dispose();
      }
      assert.equal(tf.memory().numTensors, before, 'a rejected call leaks nothing');
      const floatIds = tf.zeros([1, 3]) as tf.Tensor2D;
      assert.throws(() => model.hidden(floatIds), TokenIdError);
      floatIds.dispose();
      model.dispose();
    }
  });
});

test('GPT-2 refuses sequences longer than its learned position table', async () => {
  await onEachBackend(async () => {
    const model = await loadModel(fixture('gpt2-tiny'), { trainable: false });
    const ids = tf.zeros([1, 65], 'int32') as tf.Tensor2D;
    assert.throws(() => model.hidden(ids), /65 positions.*n_positions.*64/);
    ids.dispose();
    model.dispose();
  });
});

test('an ids tensor checked against a large vocabulary is checked again against a smaller one', async () => {
  await onEachBackend(async () => {
    const big = await loadModel(fixture('llama-student'), { trainable: false });
    const small = await loadModel(fixture('llama-student'), { trainable: false });
    (small.config as { vocabSize: number }).vocabSize = 500;
    const ids = tf.tensor2d([[1, 2, 700]], [1, 3], 'int32');
    tf.dispose(big.hidden(ids));
    assert.throws(() => small.hidden(ids), /input_ids\[0, 2\] = 700 is outside the vocabulary \[0, 500\)/);
    ids.dispose();
    big.dispose();
    small.dispose();
  });
});
