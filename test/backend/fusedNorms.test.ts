/**
 * The fused RMSNorm, LayerNorm and SwiGLU kernels and their gradients against the tfjs compositions they replace,
 * on random inputs: ≤1e-5 relative, no tensor leaked. Only webgpu runs the fused kernels (the test checks, by
 * profile, that they ran); on cpu and wasm the dispatching functions are the compositions, so those runs only check
 * the dispatch. Shapes cover vec4 and scalar rows, hidden below one workgroup's lanes, not a multiple of them, and
 * at 256 lanes with a partly filled last slot, one row, and more rows than chunks (several rows per chunk, the last
 * chunk short), and a rank-3 input.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';
import { composedLayerNorm, layerNorm } from '../../src/ops/layerNorm.ts';
import { composedRmsNorm, rmsNorm } from '../../src/ops/rmsNorm.ts';
import { activate, gatedActivation } from '../../src/model/activations.ts';

const TOLERANCE = 1e-5;
const NORM_SHAPES = [
  [1, 37],
  [5, 12],
  [3, 768],
  [300, 20],
  [2, 1001],
  [4, 4100],
  [2, 3, 64],
];
const SWIGLU_SHAPES = [
  [1, 37],
  [5, 12],
  [3, 2048],
  [2, 3, 20],
  [4, 1001],
];

type Op = (inputs: tf.Tensor[]) => tf.Tensor;

/** The op's output and its gradients with respect to every input (through tf.grads) and to the variables among them (through tf.variableGrads). */
function outputAndGrads(op: Op, inputs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  return tf.tidy(() => {
    const loss = (...xs: tf.Tensor[]): tf.Scalar => tf.sum(tf.mul(op(xs), dy));
    const grads = tf.grads(loss)(inputs);
    const variables = inputs.filter((t): t is tf.Variable => t instanceof tf.Variable);
    if (variables.length === 0) return [op(inputs), ...grads];
    const { grads: byName, value } = tf.variableGrads(() => loss(...inputs), variables);
    value.dispose();
    return [op(inputs), ...grads, ...variables.map((v) => byName[v.name])];
  });
}

/**
 * Worst relative error between the fused and composed outputs and gradients over every shape; asserts the bound,
 * no leak, and, on webgpu (and any backend that registers them), that each of the fused `kernels` ran.
 */
async function worstError(
  backend: string,
  fused: Op,
  composed: Op,
  kernels: string[],
  make: (shape: number[], seed: number) => tf.Tensor[],
  shapes: number[][],
): Promise<number> {
  let worst = 0;
  for (const [i, shape] of shapes.entries()) {
    const before = tf.memory().numTensors;
    const inputs = make(shape, 10 * i);
    const dy = tf.randomNormal(shape, 0, 1, 'float32', 10 * i + 9);
    const got = outputAndGrads(fused, inputs, dy);
    const want = outputAndGrads(composed, inputs, dy);
    for (const [j, g] of got.entries()) {
      const e = relError(await g.data(), await want[j].data());
      assert.ok(e <= TOLERANCE, `${backend} ${kernels[0]} [${shape}] result ${j}: relative error ${e}`);
      worst = Math.max(worst, e);
    }
    if (backend === 'webgpu' || tf.getKernel(kernels[0], backend)) {
      const profile = await tf.profile(() => outputAndGrads(fused, inputs, dy));
      const missing = kernels.filter((k) => !profile.kernelNames.includes(k));
      assert.deepEqual(missing, [], `${kernels[0]} [${shape}]: fused kernels that did not run`);
      tf.dispose(profile.result);
    }
    tf.dispose([...got, ...want, ...inputs, dy]);
    assert.equal(tf.memory().numTensors, before, `${backend} ${kernels[0]} [${shape}]: tensors leaked`);
  }
  return worst;
}

const hiddenOf = (shape: number[]): number => shape[shape.length - 1];
/** A trainable [hidden] parameter; tidy disposes the initial tensor, which tf.variable leaves behind. */
const parameter = (hidden: number, mean: number, seed: number): tf.Variable =>
  tf.tidy(() => tf.variable(tf.randomNormal([hidden], mean, 0.5, 'float32', seed)));

test('fused RMSNorm and its gradients (x, weight) match the tfjs composition', async (t) => {
  await onEachBackend(async (backend) => {
    const make = (shape: number[], seed: number): tf.Tensor[] => [tf.randomNormal(shape, 0, 1, 'float32', seed), parameter(hiddenOf(shape), 1, seed + 1)];
    const fused: Op = ([x, w]) => rmsNorm(x, w as tf.Tensor1D, 1e-6);
    const composed: Op = ([x, w]) => composedRmsNorm(x, w as tf.Tensor1D, 1e-6);
    const worst = await worstError(backend, fused, composed, ['RmsNorm', 'RmsNormGrad'], make, NORM_SHAPES);
    t.diagnostic(`${backend}: worst relative error ${worst.toExponential(2)}`);
  });
});

test('fused LayerNorm and its gradients (x, weight, bias) match the tfjs composition', async (t) => {
  await onEachBackend(async (backend) => {
    // A mean far from 0 against the spread, as residual streams have, checks the variance is taken about the mean.
    const make = (shape: number[], seed: number): tf.Tensor[] => [
      tf.randomNormal(shape, 3, 2, 'float32', seed),
      parameter(hiddenOf(shape), 1, seed + 1),
      parameter(hiddenOf(shape), 0, seed + 2),
    ];
    const fused: Op = ([x, w, b]) => layerNorm(x, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5);
    const composed: Op = ([x, w, b]) => composedLayerNorm(x, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5);
    const worst = await worstError(backend, fused, composed, ['LayerNorm', 'LayerNormGrad'], make, NORM_SHAPES);
    t.diagnostic(`${backend}: worst relative error ${worst.toExponential(2)}`);
  });
});

test('fused SwiGLU silu(gate)·up and its gradients (gate, up) match the tfjs composition', async (t) => {
  await onEachBackend(async (backend) => {
    // Gates out to ±12 reach both saturated ends of the sigmoid.
    const make = (shape: number[], seed: number): tf.Tensor[] => [
      tf.randomNormal(shape, 0, 4, 'float32', seed),
      tf.randomNormal(shape, 0, 1, 'float32', seed + 1),
    ];
    const fused: Op = ([g, u]) => gatedActivation('silu', g, u);
    const composed: Op = ([g, u]) => tf.mul(activate('silu', g), u);
    const worst = await worstError(backend, fused, composed, ['Swiglu', 'SwigluGrad'], make, SWIGLU_SHAPES);
    t.diagnostic(`${backend}: worst relative error ${worst.toExponential(2)}`);
  });
});
