import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/errors.ts';
import { BlendIndex, parseDataPaths } from '../../src/data/blend.ts';

test('parseDataPaths: weighted pairs, bare lists, single weighted prefix, bad weights', () => {
  assert.deepEqual(parseDataPaths('0.3 a 0.7 b'), [{ weight: 0.3, path: 'a' }, { weight: 0.7, path: 'b' }]);
  assert.deepEqual(parseDataPaths('3 a 1 b'), [{ weight: 0.75, path: 'a' }, { weight: 0.25, path: 'b' }]);
  assert.deepEqual(parseDataPaths('a b'), [{ weight: 0.5, path: 'a' }, { weight: 0.5, path: 'b' }]);
  assert.deepEqual(parseDataPaths('  1.0   data/x  '), [{ weight: 1, path: 'data/x' }]);
  assert.deepEqual(parseDataPaths('data/x'), [{ weight: 1, path: 'data/x' }]);
  assert.throws(() => parseDataPaths('0.3 a heavy b'), (e: unknown) => e instanceof ConfigError && /weight "heavy"/.test(e.message));
  assert.throws(() => parseDataPaths('0.3 a 0.7'), ConfigError);
  assert.throws(() => parseDataPaths('0 a 1 b'), ConfigError);
  assert.throws(() => parseDataPaths(''), ConfigError);
});

/** The rule by brute force, straight from the formula: argmax_d(w_d * max(i, 1) - count_d), first d on ties. */
function bruteForce(weights: number[], n: number): { dataset: number; sample: number }[] {
  const counts = weights.map(() => 0);
  const out: { dataset: number; sample: number }[] = [];
  for (let i = 0; i < n; i++) {
    const errs = weights.map((w, d) => w * Math.max(i, 1) - counts[d]);
    const best = errs.indexOf(Math.max(...errs));
    out.push({ dataset: best, sample: counts[best]++ });
  }
  return out;
}

test('a 0.3/0.7 blend gives the exact order of Megatron\'s rule and the proportions', () => {
  const weights = parseDataPaths('0.3 a 0.7 b').map((p) => p.weight);
  const n = 10_000;
  const b = new BlendIndex(weights);
  const got = Array.from({ length: n }, (_, i) => b.at(i));
  assert.deepEqual(got, bruteForce([0.3, 0.7], n));
  // The first few, written out: i=0 uses max(i,1)=1 → errors 0.3, 0.7 → b; i=1 → 0.3, -0.3 → a; ...
  assert.deepEqual(got.slice(0, 10).map((x) => x.dataset), [1, 0, 1, 1, 0, 1, 1, 0, 1, 1]);
  const fromA = got.filter((x) => x.dataset === 0).length;
  assert.ok(Math.abs(fromA / n - 0.3) < 1e-3, `proportion ${fromA / n}`);
  for (const prefix of [100, 1000, 5000]) {
    const a = got.slice(0, prefix).filter((x) => x.dataset === 0).length;
    assert.ok(Math.abs(a - 0.3 * prefix) <= 1.5, `after ${prefix}: ${a}`);
  }
});

test('random access into the blend (backwards, far ahead) equals the sequential order', () => {
  const w = [0.2, 0.5, 0.3];
  const expect = bruteForce(w, 20_000);
  const b = new BlendIndex(w);
  for (const i of [19_999, 0, 4095, 4096, 12_345, 1, 8191, 8192]) assert.deepEqual(b.at(i), expect[i], `sample ${i}`);
});
