/**
 * `--recompute_granularity full` (base.ts's recomputed layer chunks), on each backend: the loss and every gradient
 * of the fixture models (GPT-2 tied, Llama with grouped KV heads) equal those of the taped model for each layer
 * plan (uniform chunks of 1 and 2 layers, block of the first layer); the gradient hooks data parallelism uses fire
 * once per parameter through a recomputed chunk; and the peak of a deeper model's training pass falls to well
 * under half, since a chunk keeps only its input. The 5-step PyTorch trajectory with it: fixtureTrajectory.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { createModel } from '../../src/model/create.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import type { RecomputeLayers } from '../../src/model/base.ts';
import type { CausalLM } from '../../src/model/causalLM.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';

const PLANS: RecomputeLayers[] = [
  { method: 'uniform', numLayers: 1 },
  { method: 'uniform', numLayers: 2 },
  { method: 'block', numLayers: 1 },
];

/** The loss and the gradients by parameter name, read back. */
async function lossAndGrads(model: CausalLM, ids: tf.Tensor2D): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(model.logits(ids))) as tf.Scalar), model.trainableVariables());
  const byName = new Map<string, Float32Array>();
  for (const [name, v] of model.params) byName.set(name, (await grads[v.name].data()) as Float32Array);
  const loss = (await value.data())[0];
  tf.dispose([value, ...Object.values(grads)]);
  return { loss, grads: byName };
}

for (const name of ['gpt2-tiny', 'llama-student']) {
  test(`${name}: recomputing whole layers gives the taped model's loss and gradients, for each layer plan, on each backend`, async () => {
    const ids = readAllSafetensors(fixture(name, 'expected.safetensors')).get('input_ids')!;
    await onEachBackend(async (backend) => {
      const idsT = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
      const plain = await loadModel(fixture(name), { trainable: true });
      const want = await lossAndGrads(plain, idsT);
      plain.dispose();
      for (const plan of PLANS) {
        const before = tf.memory().numTensors;
        const model = await loadModel(fixture(name), { trainable: true, recompute: 'full', recomputeLayers: plan });
        const got = await lossAndGrads(model, idsT);
        const what = `${backend}, ${plan.method} ${plan.numLayers}`;
        assert.equal(got.loss, want.loss, `${what}: loss`);
        for (const [param, g] of want.grads) {
          // The same ops on the same inputs, run again: equal but for the order of float32 sums where a backend's
          // kernel does not fix it, hence a bound relative to the gradient's largest entry.
          const scale = Math.max(...g.map(Math.abs));
          const diff = maxAbsDiff(got.grads.get(param)!, g);
          assert.ok(diff <= 1e-5 * scale, `${what}: ${param} differs by ${diff} (largest entry ${scale})`);
        }
        model.dispose();
        assert.equal(tf.memory().numTensors, before, `${what}: tensors leaked`);
      }
      idsT.dispose();
    });
  });
}

test('gradient hooks fire once per parameter through recomputed layers, with the taped gradient', async () => {
  const ids = readAllSafetensors(fixture('llama-student', 'expected.safetensors')).get('input_ids')!;
  await onEachBackend(async (backend) => {
    const idsT = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
    const model = await loadModel(fixture('llama-student'), { trainable: true, recompute: 'full' });
    const fired: { name: string; grad: tf.Tensor }[] = [];
    const { value, grads } = model.withGradientHooks!(
      (n, g) => fired.push({ name: n, grad: tf.keep(tf.clone(g)) }),
      () => tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(model.logits(idsT))) as tf.Scalar), model.trainableVariables()),
    );
    assert.deepEqual(fired.map((f) => f.name).sort(), [...model.params.keys()].sort(), `${backend}: one firing per parameter`);
    for (const f of fired) {
      const returned = grads[model.params.get(f.name)!.name];
      assert.equal(maxAbsDiff(await f.grad.data(), await returned.data()), 0, `${backend}: ${f.name}`);
    }
    tf.dispose([value, ...Object.values(grads), ...fired.map((f) => f.grad), idsT]);
    model.dispose();
  });
});

test("a deeper model's training pass peaks at well under half with whole layers recomputed", async (t) => {
  const config = parseModelConfig(
    {
      model_type: 'llama',
      architectures: ['LlamaForCausalLM'],
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 6,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 64,
      max_position_embeddings: 256,
      rms_norm_eps: 1e-6,
      tie_word_embeddings: false,
    },
    'six-layer test config',
  );
  let seed = 1;
  const weights = (_name: string, shape: number[]): Float32Array =>
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed / 2 ** 32 - 0.5) * 0.1;
    });
  await onEachBackend(async (backend) => {
    const ids = tf.tensor2d(
      Int32Array.from({ length: 2 * 128 }, (_, i) => (i * 7) % 64),
      [2, 128],
      'int32',
    );
    const peak = async (full: boolean): Promise<number> => {
      seed = 1;
      const model = createModel(config, weights, { trainable: true, recompute: full ? 'full' : null });
      let out: tf.Tensor[] = [];
      const info = await tf.profile(() => {
        const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(model.logits(ids))) as tf.Scalar), model.trainableVariables());
        out = [value, ...Object.values(grads)];
      });
      tf.dispose(out);
      model.dispose();
      return info.peakBytes;
    };
    const taped = await peak(false);
    const recomputed = await peak(true);
    t.diagnostic(`${backend}: peak ${taped} bytes taped, ${recomputed} with whole layers recomputed`);
    assert.ok(recomputed < 0.5 * taped, `${backend}: peak ${recomputed} recomputed vs ${taped} taped`);
    ids.dispose();
  });
});
