/**
 * `--precision bf16-mixed`: the tensor-core matmul (f16 operands, f32 accumulation) against tfjs's fp32 matmul on
 * random inputs, on each backend present that offers subgroup matrices (the H200 through Dawn; not lavapipe, not
 * cpu/wasm, where the test checks the reported fall-back instead); the tiling rules and the shader directives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { hoistDirectives } from '../../src/backend/webgpu/device.ts';
import {
  mixedPrecisionUnavailable,
  planMatMul,
  setForceTensorCores,
  setMatMulPrecision,
  takeMatMulCounts,
} from '../../src/backend/webgpu/mixedPrecisionMatMul.ts';
import { backendsPresent } from '../helpers/backends.ts';

test('planMatMul tiles only shapes that are multiples of 128 × 128 × 32, with equal or broadcast batches', () => {
  assert.deepEqual(planMatMul([256, 32], [128, 32], false, true), { batch: 1, m: 256, n: 128, k: 32, strideA: 0, strideB: 0, outShape: [256, 128] });
  assert.deepEqual(planMatMul([2, 3, 128, 32], [2, 3, 32, 128], false, false)?.batch, 6);
  assert.deepEqual(planMatMul([1, 128, 32], [4, 32, 128], false, false), {
    batch: 4,
    m: 128,
    n: 128,
    k: 32,
    strideA: 0,
    strideB: 4096,
    outShape: [4, 128, 128],
  });
  assert.equal(planMatMul([32, 128], [32, 128], true, false)?.m, 128, 'transposed A: m is its last axis');
  assert.equal(planMatMul([128, 48], [48, 128], false, false), null, 'k not a multiple of 32');
  assert.equal(planMatMul([128, 32], [32, 64], false, false), null, 'n not a multiple of 128');
  assert.equal(planMatMul([2, 128, 32], [3, 32, 128], false, false), null, 'batches 2 and 3 do not broadcast');
  assert.equal(planMatMul([128, 32], [64, 128], false, false), null, 'inner sizes differ');
});

test("hoistDirectives moves enable and diagnostic lines ahead of tfjs's header, once each", () => {
  const code = 'struct Uniforms { x : f32, };\nfn a() {}\nenable f16;\n  diagnostic(off, subgroup_uniformity);\nenable f16;\nfn main() {}\n';
  const out = hoistDirectives(code);
  assert.match(out, /^enable f16;\ndiagnostic\(off, subgroup_uniformity\);\nstruct Uniforms/);
  assert.equal(out.match(/enable f16;/g)?.length, 1);
  assert.equal(hoistDirectives('fn main() {}'), 'fn main() {}');
});

test('mixed precision falls back to fp32 with the reason where there are no tensor cores', async () => {
  const lines: string[] = [];
  const report = await selectBackend('cpu', { log: (l) => lines.push(l), precision: 'bf16-mixed' });
  assert.equal(report.precision, '32');
  assert.ok(
    lines.some((l) => /bf16-mixed asked for, running fp32 matmuls: the cpu backend has no tensor-core path/.test(l)),
    lines.join('\n'),
  );
});

/** Worst |mixed − fp32| over the largest |fp32| output: f16 operands round to 2^-11, so about 1e-3 at most. */
async function worstError(a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean): Promise<{ err: number; tensorCore: number }> {
  setMatMulPrecision('bf16-mixed');
  takeMatMulCounts();
  const mixedT = tf.matMul(a, b, ta, tb);
  const mixed = (await mixedT.data()) as Float32Array;
  const { tensorCore } = takeMatMulCounts();
  setMatMulPrecision('32');
  const refT = tf.matMul(a, b, ta, tb);
  const ref = (await refT.data()) as Float32Array;
  tf.dispose([mixedT, refT]);
  let scale = 0;
  for (const v of ref) scale = Math.max(scale, Math.abs(v));
  let err = 0;
  for (let i = 0; i < ref.length; i++) err = Math.max(err, Math.abs(mixed[i] - ref[i]) / scale);
  return { err, tensorCore };
}

test('tensor-core matmul equals fp32 within 1e-2 on random inputs, every layout and scale, where the adapter has subgroup matrices', async (t) => {
  for (const backend of await backendsPresent()) {
    if (backend !== 'webgpu') continue;
    await selectBackend('webgpu', { log: null, allowSoftwareAdapter: true });
    const why = mixedPrecisionUnavailable();
    if (why) {
      assert.throws(() => setMatMulPrecision('bf16-mixed'), /needs tensor-core matmuls on webgpu/);
      t.diagnostic(`webgpu: no tensor-core path here (${why}); checked that asking for it throws with the reason`);
      continue;
    }
    setForceTensorCores(true);
    try {
      const cases: [number[], number[], boolean, boolean, number][] = [
        [[128, 64], [64, 256], false, false, 1],
        [[64, 128], [64, 256], true, false, 1],
        [[128, 64], [256, 64], false, true, 1],
        [[64, 128], [256, 64], true, true, 1],
        [[2, 3, 128, 32], [2, 3, 32, 128], false, false, 1],
        [[1, 128, 64], [3, 64, 128], false, false, 1],
        [[256, 256], [256, 128], false, false, 1e-9], // KD gradients are this small: f16 alone would flush them to 0
        [[256, 256], [256, 128], false, false, 3e4], // and f16 alone would overflow products of these
      ];
      let worst = 0;
      for (const [as, bs, ta, tb, scale] of cases) {
        const a = tf.mul(tf.randomNormal(as, 0, 1, 'float32', 7), scale);
        const b = tf.randomNormal(bs, 0, 1, 'float32', 8);
        const { err, tensorCore } = await worstError(a, b, ta, tb);
        tf.dispose([a, b]);
        assert.equal(tensorCore, 1, `${JSON.stringify(as)}·${JSON.stringify(bs)} did not take the tensor-core path`);
        assert.ok(err <= 1e-2, `${JSON.stringify(as)}·${JSON.stringify(bs)} (${ta}, ${tb}, scale ${scale}): error ${err}`);
        worst = Math.max(worst, err);
      }
      t.diagnostic(`webgpu tensor cores: worst error relative to the largest output ${worst.toExponential(2)}`);
      // Gradients go through the same kernel in the transposed layouts tfjs's BatchMatMul gradient uses.
      const x = tf.randomNormal([256, 128], 0, 1, 'float32', 9);
      const w = tf.randomNormal([128, 128], 0, 0.1, 'float32', 10);
      const gradsAt = async (p: '32' | 'bf16-mixed'): Promise<Float32Array[]> => {
        setMatMulPrecision(p);
        const g = tf.grads((xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.square(tf.matMul(xx, ww, false, true))))([x, w]);
        const out = await Promise.all(g.map(async (t) => (await t.data()) as Float32Array));
        tf.dispose(g);
        return out;
      };
      const mixedGrads = await gradsAt('bf16-mixed');
      const refGrads = await gradsAt('32');
      for (const [i, ref] of refGrads.entries()) {
        let scale = 0;
        for (const v of ref) scale = Math.max(scale, Math.abs(v));
        let err = 0;
        for (let j = 0; j < ref.length; j++) err = Math.max(err, Math.abs(mixedGrads[i][j] - ref[j]) / scale);
        assert.ok(err <= 1e-2, `gradient ${i}: error ${err}`);
      }
      tf.dispose([x, w]);
    } finally {
      setForceTensorCores(false);
      setMatMulPrecision('32');
    }
  }
});
