/**
 * The chunked loss on hidden states (custom gradient, analytic per chunk) against plain tfjs autodiff of the
 * unchunked composition (logits = hidden · headᵀ, then the per-position functions and the masked mean), on random
 * inputs, for every divergence, τ = 1 and 2, with CE mixed in, several chunk sizes (ones that do not divide N too),
 * and teacher/student vocabularies of different sizes. Values and gradients to ≤ 1e-5 relative.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { onEachBackend, readAndDispose, readScalars } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import { kdLossFromHidden, lossChunkRows, LOSS_CHUNK_BYTES } from '../../src/losses/chunkedKd.ts';
import { perPositionDivergence } from '../../src/losses/divergences.ts';
import { tokenCrossEntropy } from '../../src/losses/crossEntropy.ts';
import { maskedMean } from '../../src/losses/maskedMean.ts';
import { mixLosses } from '../../src/losses/mixing.ts';
import { DEFAULT_KD_LOSS, KD_LOSS_KINDS, type KdLossOptions } from '../../src/losses/types.ts';

const N = 13;
const H = 8;
const HT = 6;

interface Inputs {
  h: tf.Tensor2D;
  w: tf.Tensor2D;
  th: tf.Tensor2D;
  tw: tf.Tensor2D;
  labels: tf.Tensor1D;
  mask: tf.Tensor1D;
}

function inputs(vs: number, vt: number, seed: number): Inputs {
  return {
    h: tf.randomNormal([N, H], 0, 1, 'float32', seed) as tf.Tensor2D,
    w: tf.randomNormal([vs, H], 0, 0.7, 'float32', seed + 1) as tf.Tensor2D,
    th: tf.randomNormal([N, HT], 0, 1, 'float32', seed + 2) as tf.Tensor2D,
    tw: tf.randomNormal([vt, HT], 0, 0.9, 'float32', seed + 3) as tf.Tensor2D,
    labels: tf.randomUniform([N], 0, vs, 'int32', seed + 4) as tf.Tensor1D,
    mask: tf.tensor1d(Array.from({ length: N }, (_, i) => (i % 4 === 1 ? 0 : 1))),
  };
}

/** The unchunked composition, differentiated by tfjs's tape. */
function reference(x: Inputs, h: tf.Tensor2D, w: tf.Tensor2D, opts: KdLossOptions, withCe: boolean): tf.Scalar {
  const zs = tf.matMul(h, w, false, true) as tf.Tensor2D;
  const zt = tf.matMul(x.th, x.tw, false, true) as tf.Tensor2D;
  const shared = Math.min(zs.shape[1], zt.shape[1]);
  const kd = maskedMean(perPositionDivergence(tf.slice(zt, [0, 0], [N, shared]), tf.slice(zs, [0, 0], [N, shared]), opts), x.mask).loss;
  const ce = withCe ? maskedMean(tokenCrossEntropy(zs, x.labels), x.mask).loss : null;
  return mixLosses(ce, kd, opts);
}

async function compare(label: string, x: Inputs, opts: KdLossOptions, withCe: boolean, chunkSize: number, worst: { v: number }): Promise<void> {
  const out = tf.tidy(() => {
    const ref = tf.valueAndGrads((h: tf.Tensor, w: tf.Tensor) => reference(x, h as tf.Tensor2D, w as tf.Tensor2D, opts, withCe));
    const got = tf.valueAndGrads(
      (h: tf.Tensor, w: tf.Tensor) =>
        kdLossFromHidden({
          studentHidden: h as tf.Tensor2D,
          studentHead: w as tf.Tensor2D,
          teacherHidden: x.th,
          teacherHead: x.tw,
          labels: withCe ? x.labels : undefined,
          mask: x.mask,
          options: opts,
          chunkSize,
        }).loss,
    );
    const r = ref([x.h, x.w]);
    const g = got([x.h, x.w]);
    return [g.value, r.value, g.grads[0], r.grads[0], g.grads[1], r.grads[1]];
  });
  const [gv, rv, gh, rh, gw, rw] = await readAndDispose(out);
  const errs = [relError(gv, rv), relError(gh, rh), relError(gw, rw)];
  worst.v = Math.max(worst.v, ...errs);
  assert.ok(
    errs.every((e) => e <= 1e-5),
    `${label} chunk ${chunkSize}: rel errors value/dHidden/dHead ${errs}`,
  );
}

test('chunked == unchunked autodiff: every divergence, τ 1 and 2, CE mixed in, chunk sizes 1, 4, 5, 13, 20', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const x = inputs(37, 37, 11);
    const worst = { v: 0 };
    for (const kind of KD_LOSS_KINDS) {
      for (const temperature of [1, 2]) {
        const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind, temperature, jsdBeta: 0.3, skewLambda: 0.2, kdRatio: 0.6 };
        for (const chunk of [1, 4, 5, 13, 20]) await compare(`${backend} ${kind} τ=${temperature} +CE`, x, opts, true, chunk, worst);
        await compare(`${backend} ${kind} τ=${temperature} pure KD`, x, { ...opts, kdRatio: 1 }, false, 5, worst);
      }
    }
    console.log(`${backend}: worst relative error over values and gradients ${worst.v.toExponential(2)}`);
    tf.dispose(Object.values(x));
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('vocabulary mismatch: KD on the shared ids [0, min), CE on the student full vocabulary, with a note', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const worst = { v: 0 };
    for (const [vs, vt] of [
      [37, 41],
      [37, 31],
    ]) {
      const x = inputs(vs, vt, 23);
      const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind: 'jsd', temperature: 2, kdRatio: 0.5 };
      await compare(`${backend} Vs ${vs} Vt ${vt}`, x, opts, true, 4, worst);
      const notes: string[] = [];
      tf.tidy(() => {
        const r = kdLossFromHidden({
          studentHidden: x.h,
          studentHead: x.w,
          teacherLogitsFn: (s, e) => tf.matMul(tf.slice(x.th, [s, 0], [e - s, HT]), x.tw, false, true) as tf.Tensor2D,
          mask: x.mask,
          options: opts,
          labels: x.labels,
          chunkSize: 6,
          log: (l) => notes.push(l),
        });
        assert.deepEqual(r.notes, notes);
      });
      assert.equal(notes.length, 1, 'the note is given once, not per chunk');
      assert.match(notes[0], new RegExp(`ids \\[0, ${Math.min(vs, vt)}\\)`));
      tf.dispose(Object.values(x));
    }
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('zero mask: loss 0, count 0, gradients 0 and finite', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const x = inputs(37, 37, 5);
    const counts: tf.Tensor[] = [];
    const out = tf.tidy(() => {
      const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind: 'reverse_kl', kdRatio: 0.5 };
      const f = (h: tf.Tensor, w: tf.Tensor): tf.Scalar => {
        const r = kdLossFromHidden({
          studentHidden: h as tf.Tensor2D,
          studentHead: w as tf.Tensor2D,
          teacherHidden: x.th,
          teacherHead: x.tw,
          labels: x.labels,
          mask: tf.zeros([N]),
          options: opts,
          chunkSize: 5,
        });
        // Read after the tidy (webgpu reads only asynchronously), so kept past the forward pass's own tidy.
        counts.push(tf.keep(r.count));
        return r.loss;
      };
      const { value, grads } = tf.valueAndGrads(f)([x.h, x.w]);
      return [value, ...grads];
    });
    assert.equal(counts.length, 1, 'the loss closure runs once');
    const [value, ...grads] = await readAndDispose(out);
    const [count] = await readScalars(counts);
    assert.equal(value[0], 0, backend);
    assert.equal(count, 0);
    for (const g of grads)
      assert.ok(
        g.every((v) => v === 0),
        `${backend}: gradient not 0`,
      );
    tf.dispose(Object.values(x));
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('the teacher is never differentiated and the parts are reported', async () => {
  await onEachBackend(async () => {
    const x = inputs(37, 37, 7);
    const parts = tf.tidy(() => {
      const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind: 'forward_kl', kdRatio: 0.25, temperature: 2 };
      // The teacher's tensors are not inputs of the custom gradient: tfjs finds no path from them to the loss.
      assert.throws(
        () =>
          tf.valueAndGrads(
            (th: tf.Tensor) =>
              kdLossFromHidden({
                studentHidden: x.h,
                studentHead: x.w,
                teacherHidden: th as tf.Tensor2D,
                teacherHead: x.tw,
                labels: x.labels,
                mask: x.mask,
                options: opts,
              }).loss,
          )([x.th]),
        /Cannot compute gradient/,
      );
      const r = kdLossFromHidden({
        studentHidden: x.h,
        studentHead: x.w,
        teacherHidden: x.th,
        teacherHead: x.tw,
        labels: x.labels,
        mask: x.mask,
        options: opts,
      });
      assert.ok(r.ce, 'labels given: the CE part is reported');
      return [r.loss, r.kd, r.ce, r.count];
    });
    const [loss, kd, ce, count] = await readScalars(parts);
    assert.ok(Math.abs(loss - (0.75 * ce + 0.25 * 4 * kd)) < 1e-5 * Math.abs(loss));
    assert.equal(count, 10);
    tf.dispose(Object.values(x));
  });
});

test('tensors made inside the loss closure (hidden, mask, labels, teacher) survive until the backward pass', async () => {
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    const x = inputs(37, 37, 31);
    const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind: 'skew_kl', kdRatio: 0.7, temperature: 2 };
    const out = tf.tidy(() => {
      const ref = tf.valueAndGrads((h: tf.Tensor, w: tf.Tensor) => reference(x, h as tf.Tensor2D, w as tf.Tensor2D, opts, true))([x.h, x.w]);
      const got = tf.valueAndGrads(
        (h: tf.Tensor, w: tf.Tensor) =>
          kdLossFromHidden({
            // Each of these is an intermediate that the forward tidy disposes before the backward runs.
            studentHidden: tf.mul(h, 1) as tf.Tensor2D,
            studentHead: tf.add(w, 0) as tf.Tensor2D,
            teacherHidden: tf.mul(x.th, 1) as tf.Tensor2D,
            teacherHead: tf.mul(x.tw, 1) as tf.Tensor2D,
            labels: tf.add(x.labels, tf.scalar(0, 'int32')) as tf.Tensor1D,
            mask: tf.mul(x.mask, 1) as tf.Tensor1D,
            options: opts,
            chunkSize: 3,
          }).loss,
      )([x.h, x.w]);
      return [got.grads[0], ref.grads[0], got.grads[1], ref.grads[1]];
    });
    const [gh, rh, gw, rw] = await readAndDispose(out);
    const errs = [relError(gh, rh), relError(gw, rw)];
    assert.ok(
      errs.every((e) => e <= 1e-5),
      `${backend}: ${errs}`,
    );
    tf.dispose(Object.values(x));
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
});

test('heads as tf.Variables (not saved for the backward pass) give the same gradients', async () => {
  await onEachBackend(async (backend) => {
    const x = inputs(37, 41, 47);
    const w = tf.variable(x.w);
    const tw = tf.variable(x.tw, false);
    const before = tf.memory().numTensors;
    const opts: KdLossOptions = { ...DEFAULT_KD_LOSS, kind: 'forward_kl', kdRatio: 0.5 };
    const out = tf.tidy(() => {
      const ref = tf.valueAndGrads((h: tf.Tensor, ww: tf.Tensor) => reference(x, h as tf.Tensor2D, ww as tf.Tensor2D, opts, true))([x.h, x.w]);
      const got = tf.variableGrads(
        () =>
          kdLossFromHidden({
            studentHidden: tf.mul(x.h, 1) as tf.Tensor2D,
            studentHead: w,
            teacherHidden: x.th,
            teacherHead: tw,
            labels: x.labels,
            mask: x.mask,
            options: opts,
            chunkSize: 6,
          }).loss,
        [w],
      );
      return [got.grads[w.name], ref.grads[1]];
    });
    const [gw, rw] = await readAndDispose(out);
    const err = relError(gw, rw);
    assert.ok(err <= 1e-5, `${backend}: ${err}`);
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
    tf.dispose([w, tw, ...Object.values(x)]);
  });
});

test('--loss_chunk 0 sizes chunks to 64 MiB per [chunk, vocab] tensor; a given size is kept', () => {
  assert.equal(lossChunkRows(0, 32768), 512);
  assert.equal(lossChunkRows(0, 151936), 110);
  assert.equal(lossChunkRows(0, 4096), 4096);
  assert.equal(lossChunkRows(0, 1e9), 16, 'at least 16 rows, whatever the vocabulary');
  assert.equal(lossChunkRows(7, 151936), 7);
  assert.ok(lossChunkRows(0, 151936) * 151936 * 4 <= LOSS_CHUNK_BYTES);
});
