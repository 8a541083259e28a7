/**
 * AdamW against torch.optim.AdamW's formula computed independently in float64, with weight decay on matrices
 * only (biases and norm weights excluded, NeMo's default) and on everything; plus the NeMo cosine schedule and
 * the optimizer state round trip a checkpoint relies on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { cosineAnnealingLr } from '../../src/optim/schedule.ts';
import { maxAbsDiff } from '../helpers/fixtures.ts';
import { onEachBackend } from '../helpers/backends.ts';

function reference(p0: number[], grads: number[][], lr: number, wd: number, decayed: boolean): number[] {
  const [b1, b2, eps] = [0.9, 0.95, 1e-8];
  const p = [...p0];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, t) => {
    const step = t + 1;
    for (let i = 0; i < p.length; i++) {
      if (decayed) p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** step) + eps;
      p[i] -= (lr / (1 - b1 ** step)) * (m[i] / denom);
    }
  });
  return p;
}

test('AdamW (flat and per-parameter) matches the float64 reference; decay skips 1-D parameters unless weightDecayAll', async () => {
  await selectBackend('cpu', { log: null });
  for (const [decayAll, flat] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ]) {
    const init = { 'layer.weight': [0.5, -0.25, 1, 2, -1, 0.125], 'layer.bias': [0.3, -0.7], 'norm.weight': [1, 1] };
    const shapes: Record<string, number[]> = { 'layer.weight': [2, 3], 'layer.bias': [2], 'norm.weight': [2] };
    const params = new Map(Object.entries(init).map(([k, v]) => [k, tf.variable(tf.tensor(v, shapes[k]))] as const));
    const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, weightDecayAll: decayAll, flat });
    const steps = [0, 1, 2].map((s) => Object.fromEntries(Object.entries(init).map(([k, v]) => [k, v.map((_, i) => Math.sin(1 + i + 3 * s + k.length))])));
    for (const g of steps) {
      const grads = new Map(Object.entries(g).map(([k, v]) => [k, tf.tensor(v, shapes[k])] as [string, tf.Tensor]));
      opt.apply(grads, 0.01);
      for (const t of grads.values()) t.dispose();
    }
    for (const [k, v] of params) {
      const want = reference(
        init[k as keyof typeof init],
        steps.map((s) => s[k]),
        0.01,
        0.1,
        decayAll || shapes[k].length >= 2,
      );
      assert.ok(maxAbsDiff(v.dataSync(), want) < 1e-6, `${k} (decayAll ${decayAll}, flat ${flat}): ${Array.from(v.dataSync())} vs ${want}`);
    }
    // The state a checkpoint holds restores the same next step.
    const state = await opt.state();
    const copy = new Map([...params].map(([k, v]) => [k, tf.variable(v.clone())] as const));
    const opt2 = new AdamW(copy, opt.options);
    opt2.loadState(state);
    const g = new Map([...params].map(([k, v]) => [k, tf.onesLike(v)] as [string, tf.Tensor]));
    opt.apply(g, 0.01);
    opt2.apply(g, 0.01);
    for (const [k, v] of params) assert.equal(maxAbsDiff(v.dataSync(), copy.get(k)!.dataSync()), 0, k);
    for (const t of [...g.values(), ...params.values(), ...copy.values()]) t.dispose();
    opt.dispose();
    opt2.dispose();
  }
});

test('NeMo cosine schedule: linear warm-up to lr, cosine to min_lr at max_steps, min_lr after', () => {
  const o = { lr: 1e-3, minLr: 1e-5, warmupSteps: 10, maxSteps: 110 };
  assert.ok(Math.abs(cosineAnnealingLr(0, o) - 1e-3 / 11) < 1e-12);
  assert.ok(Math.abs(cosineAnnealingLr(10, o) - 1e-3) < 1e-12);
  assert.ok(Math.abs(cosineAnnealingLr(60, o) - (1e-5 + (1e-3 - 1e-5) / 2)) < 1e-12);
  assert.ok(Math.abs(cosineAnnealingLr(110, o) - 1e-5) < 1e-12);
  assert.equal(cosineAnnealingLr(500, o), 1e-5);
});

test('a clipping coefficient given to AdamW steps exactly as the gradients multiplied by it would (flat and per-parameter, each backend)', async () => {
  await onEachBackend(async (backend) => {
    for (const flat of [false, true]) {
      const shapes: Record<string, number[]> = { w: [3, 5], b: [7] };
      const make = (): Map<string, tf.Variable> =>
        new Map(
          Object.entries(shapes).map(
            ([k, s]) =>
              [
                k,
                tf.variable(
                  tf.tensor(
                    Array.from({ length: s.reduce((a, c) => a * c) }, (_, i) => Math.cos(i + k.length)),
                    s,
                  ),
                ),
              ] as const,
          ),
        );
      const scaled = make();
      const premultiplied = make();
      const a = new AdamW(scaled, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, weightDecayAll: false, flat });
      const b = new AdamW(premultiplied, a.options);
      const coef = 1 / (7.3 + 1e-6);
      for (let step = 0; step < 2; step++) {
        const grads = new Map(
          Object.entries(shapes).map(
            ([k, s]) =>
              [
                k,
                tf.tensor(
                  Array.from({ length: s.reduce((x, c) => x * c) }, (_, i) => Math.sin(i * 0.7 + step + k.length)),
                  s,
                ),
              ] as [string, tf.Tensor],
          ),
        );
        const multiplied = new Map([...grads].map(([k, g]) => [k, tf.mul(g, coef)] as [string, tf.Tensor]));
        a.apply(grads, 0.01, coef);
        b.apply(multiplied, 0.01);
        tf.dispose([...grads.values(), ...multiplied.values()]);
      }
      for (const [k, v] of scaled) {
        const [x, y] = await Promise.all([v.data(), premultiplied.get(k)!.data()]);
        assert.equal(maxAbsDiff(x, y), 0, `${backend}, flat ${flat}, ${k}`);
      }
      tf.dispose([...scaled.values(), ...premultiplied.values()]);
      a.dispose();
      b.dispose();
    }
  });
});
