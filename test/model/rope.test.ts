/**
 * RoPE frequencies against transformers' formulas (`_compute_default_rope_parameters`, linear scaling,
 * `_compute_llama3_parameters`), recomputed here independently in float64 from the formulas as published.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseModelConfig } from '../../src/model/config.ts';
import { ropeInvFreq } from '../../src/model/rope.ts';

function baseInvFreq(dim: number, theta: number): number[] {
  return Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
}

/** transformers' llama3 rule: wavelengths above low_freq_wavelen divided by factor, below high kept, blended between. */
function llama3Expected(dim: number, theta: number, factor: number, low: number, high: number, oldLen: number): number[] {
  return baseInvFreq(dim, theta).map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < oldLen / high) return f;
    if (wavelen > oldLen / low) return f / factor;
    const smooth = (oldLen / wavelen - low) / (high - low);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

function assertClose(got: Float32Array, want: number[], what: string): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    const rel = Math.abs(got[i] - want[i]) / Math.abs(want[i]);
    assert.ok(rel < 1e-6, `${what}: inv_freq[${i}] = ${got[i]}, expected ${want[i]} (relative ${rel})`);
  }
}

const llama31 = {
  model_type: 'llama',
  vocab_size: 128256,
  hidden_size: 4096,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  rope_theta: 500000.0,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
};

test('llama3 rope scaling (Llama 3.1 8B config) gives transformers inv_freq', () => {
  const c = parseModelConfig(llama31, 'llama31/config.json');
  assert.equal(c.ropeScaling.type, 'llama3');
  assert.equal(c.headDim, 128);
  const got = ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling);
  const want = llama3Expected(128, 500000, 8, 1, 4, 8192);
  assertClose(got, want, 'llama3');
  // The three bands are all present: unchanged high frequencies, blended middle, divided low frequencies.
  const base = baseInvFreq(128, 500000);
  assert.ok(Math.abs(got[0] - base[0]) < 1e-7);
  assert.ok(Math.abs(got[63] - base[63] / 8) / (base[63] / 8) < 1e-6);
  assert.ok(
    got.some((f, i) => f < base[i] * 0.99 && f > (base[i] / 8) * 1.01),
    'a blended band exists',
  );
});

test('the same llama3 scaling given as transformers 5 rope_parameters parses the same', () => {
  const { rope_scaling: rs, rope_theta: theta, ...rest } = llama31;
  const c = parseModelConfig({ ...rest, rope_parameters: { ...rs, rope_theta: theta } }, 'v5/config.json');
  assert.equal(c.ropeTheta, 500000);
  assertClose(ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling), llama3Expected(128, 500000, 8, 1, 4, 8192), 'rope_parameters');
});

test('linear rope scaling divides every frequency by the factor', () => {
  const c = parseModelConfig({ ...llama31, rope_theta: 10000, rope_scaling: { type: 'linear', factor: 4 }, head_dim: 64 }, 'lin/config.json');
  assert.equal(c.ropeScaling.type, 'linear');
  assertClose(
    ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling),
    baseInvFreq(64, 10000).map((f) => f / 4),
    'linear',
  );
});

test('default rope (fixtures form: rope_parameters with rope_type default)', () => {
  const c = parseModelConfig({ ...llama31, rope_scaling: undefined, rope_parameters: { rope_theta: 10000, rope_type: 'default' } }, 'd/config.json');
  assert.equal(c.ropeScaling.type, 'default');
  assertClose(ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling), baseInvFreq(128, 10000), 'default');
});
