/**
 * The gradient through the embedding lookup (tf.gather; on wasm through the UnsortedSegmentSum kernel this project
 * registers) against central finite differences of the same loss, on each backend. The tied models also check that
 * the head's share of the gradient reaches the embedding.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/checkpoint/load.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture } from '../helpers/fixtures.ts';

const CASES = [
  { name: 'gpt2-tiny', embedding: 'transformer.wte.weight' },
  { name: 'llama-student', embedding: 'model.embed_tokens.weight' },
  { name: 'llama-teacher', embedding: 'model.embed_tokens.weight' },
];

/** A fixed pseudo-random weight per logit, so that the loss Σ logits·w mixes every position and vocabulary entry. */
function fixedWeights(n: number): Float32Array {
  const w = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    w[i] = (s / 2 ** 32) * 2 - 1;
  }
  return w;
}

for (const { name, embedding } of CASES) {
  test(`${name}: embedding gradient matches central finite differences on each backend`, async () => {
    const ids = readAllSafetensors(fixture(name, 'expected.safetensors')).get('input_ids')!;
    const [b, t] = ids.shape;
    await onEachBackend(async (backend) => {
      const model = await loadModel(fixture(name), { trainable: true });
      const idsT = tf.tensor2d(ids.data as Int32Array, [b, t], 'int32');
      const vocab = model.config.vocabSize;
      const hidden = model.config.hiddenSize;
      const w = tf.tensor3d(fixedWeights(b * t * vocab), [b, t, vocab]);
      const emb = model.params.get(embedding)!;
      const loss = (): tf.Scalar => tf.tidy(() => tf.sum(tf.mul(model.logits(idsT), w)));
      const { grads, value } = tf.variableGrads(loss, [emb]);
      const g = (await grads[emb.name].data()) as Float32Array;
      value.dispose();
      tf.dispose(grads);

      // Host-side float64 sum of the float32 products, so the differences are not lost to float32 accumulation.
      const wData = (await w.data()) as Float32Array;
      const lossHost = async (): Promise<number> => {
        const l = model.logits(idsT);
        const d = await l.data();
        l.dispose();
        let s = 0;
        for (let i = 0; i < d.length; i++) s += d[i] * wData[i];
        return s;
      };
      const orig = (await emb.data()) as Float32Array;
      const idsArr = ids.data as Int32Array;
      // Ids that occur in the input (embedding and head paths) and one that does not (head path only).
      const entries: [number, number][] = [
        [idsArr[3], 0],
        [idsArr[t + 5], hidden - 1],
        [idsArr[0], 7],
        [vocab - 1, 2],
      ];
      const eps = 1e-3;
      for (const [row, col] of entries) {
        const at = row * hidden + col;
        const probe = async (delta: number): Promise<number> => {
          const copy = orig.slice();
          copy[at] += delta;
          tf.tidy(() => emb.assign(tf.tensor2d(copy, emb.shape as [number, number])));
          return lossHost();
        };
        const fd = ((await probe(eps)) - (await probe(-eps))) / (2 * eps);
        const err = Math.abs(fd - g[at]) / Math.max(Math.abs(fd), 1e-2);
        console.log(
          `${name} on ${backend}: d loss / d ${embedding}[${row}, ${col}] autodiff ${g[at].toFixed(5)} finite-diff ${fd.toFixed(5)} (rel ${err.toExponential(1)})`,
        );
        assert.ok(err < 5e-3, `${name} on ${backend}: gradient at [${row}, ${col}] is ${g[at]}, finite differences give ${fd}`);
      }
      tf.tidy(() => emb.assign(tf.tensor2d(orig, emb.shape as [number, number])));
      tf.dispose([w, idsT]);
      model.dispose();
    });
  });
}
