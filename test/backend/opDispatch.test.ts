/**
 * How an op reaches a backend's kernels, shown on the cpu backend with no GPU: kernels registered for 'cpu' under
 * the contract's names ('RmsNorm', 'RmsNormGrad'), written here in plain JavaScript straight from the contract in
 * src/ops/rmsNorm.ts, are what rmsNorm runs, forward and backward (the Grad kernel's two outputs become the two
 * gradients); they agree with the composition and its autodiff, which checks the contract's formulas too. A backend
 * that registers the forward without its Grad gets the composition.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { relError } from '../helpers/fixtures.ts';
import { composedRmsNorm, RMS_NORM_GRAD_KERNEL, RMS_NORM_KERNEL, rmsNorm, type RmsNormAttrs } from '../../src/ops/rmsNorm.ts';

const calls = { forward: 0, grad: 0 };

function read(backend: tf.KernelBackend, t: tf.TensorInfo | undefined): Float32Array {
  if (!t) throw new Error('kernel input missing');
  return backend.readSync(t.dataId) as Float32Array;
}

function output(backend: tf.KernelBackend, values: Float32Array, shape: number[]): tf.TensorInfo {
  return { dataId: backend.write(values, shape, 'float32'), shape, dtype: 'float32' };
}

/** r = rsqrt(Σ_j x² / hidden + eps) of each row, in double precision. */
function rowRms(x: Float32Array, rows: number, hidden: number, eps: number): number[] {
  return Array.from({ length: rows }, (_, i) => {
    let squares = 0;
    for (let j = 0; j < hidden; j++) squares += x[i * hidden + j] ** 2;
    return 1 / Math.sqrt(squares / hidden + eps);
  });
}

const forwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  calls.forward++;
  const b = backend as tf.KernelBackend;
  const [rows, hidden] = (inputs.x as tf.TensorInfo).shape;
  const [x, w] = [read(b, inputs.x), read(b, inputs.weight)];
  const r = rowRms(x, rows, hidden, (attrs as unknown as RmsNormAttrs).eps);
  return output(
    b,
    Float32Array.from(x, (v, k) => v * r[Math.floor(k / hidden)] * w[k % hidden]),
    [rows, hidden],
  );
};

/** dx = r·g − x · r³ · mean_j(g·x) with g = dy·w;  dWeight = Σ_rows dy·x·r. */
const gradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  calls.grad++;
  const b = backend as tf.KernelBackend;
  const [rows, hidden] = (inputs.x as tf.TensorInfo).shape;
  const [dy, x, w] = [read(b, inputs.dy), read(b, inputs.x), read(b, inputs.weight)];
  const r = rowRms(x, rows, hidden, (attrs as unknown as RmsNormAttrs).eps);
  const dx = new Float32Array(rows * hidden);
  const dWeight = new Float64Array(hidden);
  for (let i = 0; i < rows; i++) {
    let dot = 0;
    for (let j = 0; j < hidden; j++) dot += dy[i * hidden + j] * w[j] * x[i * hidden + j];
    for (let j = 0; j < hidden; j++) {
      const k = i * hidden + j;
      dx[k] = r[i] * dy[k] * w[j] - x[k] * r[i] ** 3 * (dot / hidden);
      dWeight[j] += dy[k] * x[k] * r[i];
    }
  }
  return [output(b, dx, [rows, hidden]), output(b, Float32Array.from(dWeight), [hidden])];
};

/** The value and the gradients w.r.t. x and weight of Σ op(x, w)·dy. */
function valueAndGrads(op: typeof rmsNorm, x: tf.Tensor, w: tf.Tensor1D, dy: tf.Tensor): tf.Tensor[] {
  return tf.tidy(() => {
    const f = (a: tf.Tensor, b: tf.Tensor): tf.Scalar => tf.sum(tf.mul(op(a, b as tf.Tensor1D, 1e-6), dy));
    return [op(x, w, 1e-6), ...tf.grads(f)([x, w])];
  });
}

test('rmsNorm runs the kernels a backend registers under the contract names, forward and Grad (two outputs)', async () => {
  await selectBackend('cpu', { log: null });
  try {
    tf.registerKernel({ kernelName: RMS_NORM_KERNEL, backendName: 'cpu', kernelFunc: forwardKernel });
    tf.registerKernel({ kernelName: RMS_NORM_GRAD_KERNEL, backendName: 'cpu', kernelFunc: gradKernel });
    const x = tf.randomNormal([2, 3, 16], 0, 1, 'float32', 1);
    const w = tf.randomNormal([16], 1, 0.5, 'float32', 2) as tf.Tensor1D;
    const dy = tf.randomNormal([2, 3, 16], 0, 1, 'float32', 3);
    const before = tf.memory().numTensors;
    const profile = await tf.profile(() => tf.dispose(valueAndGrads(rmsNorm, x, w, dy)));
    assert.ok(profile.kernelNames.includes(RMS_NORM_KERNEL) && profile.kernelNames.includes(RMS_NORM_GRAD_KERNEL), profile.kernelNames.join(' '));
    assert.deepEqual(calls, { forward: 2, grad: 1 }, 'one forward for the value, one under the tape, one Grad');
    const got = valueAndGrads(rmsNorm, x, w, dy);
    const want = valueAndGrads(composedRmsNorm, x, w, dy);
    for (const [i, name] of ['y', 'dx', 'dWeight'].entries()) {
      assert.deepEqual(got[i].shape, want[i].shape, name);
      const e = relError(got[i].dataSync(), want[i].dataSync());
      assert.ok(e <= 1e-5, `${name}: relative error ${e}`);
    }
    tf.dispose([...got, ...want]);
    assert.equal(tf.memory().numTensors, before, 'tensors left behind');

    // The forward alone is not enough: without its Grad kernel the op keeps the composition.
    tf.unregisterKernel(RMS_NORM_GRAD_KERNEL, 'cpu');
    const forwardCalls = calls.forward;
    tf.dispose(valueAndGrads(rmsNorm, x, w, dy));
    assert.equal(calls.forward, forwardCalls);
    tf.dispose([x, w, dy]);
  } finally {
    for (const name of [RMS_NORM_KERNEL, RMS_NORM_GRAD_KERNEL]) if (tf.getKernel(name, 'cpu')) tf.unregisterKernel(name, 'cpu');
  }
});
