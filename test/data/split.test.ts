import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/errors.ts';
import { parseSplit, splitRanges } from '../../src/data/split.ts';

test('parseSplit normalises and pads', () => {
  assert.deepEqual(parseSplit('99,1,0'), [0.99, 0.01, 0]);
  assert.deepEqual(parseSplit('1'), [1, 0, 0]);
  assert.deepEqual(parseSplit('2/1/1'), [0.5, 0.25, 0.25]);
  assert.throws(() => parseSplit('a,b'), ConfigError);
  assert.throws(() => parseSplit('0,0,0'), ConfigError);
  assert.throws(() => parseSplit('-1,2'), ConfigError);
});

test('splitRanges: contiguous, covering, deterministic, Megatron rounding', () => {
  for (const n of [0, 1, 7, 20, 500, 1001]) {
    for (const s of ['99,1,0', '98,1,1', '1,1,1', '100,0,0', '80,10,10']) {
      const r = splitRanges(n, parseSplit(s));
      assert.deepEqual(r, splitRanges(n, parseSplit(s)), 'deterministic');
      assert.equal(r.train[0], 0);
      assert.equal(r.train[1], r.valid[0]);
      assert.equal(r.valid[1], r.test[0]);
      assert.equal(r.test[1], n);
    }
  }
  // Values Megatron's get_split_indices gives (computed with its Python code: round half to even, then shift).
  assert.deepEqual(splitRanges(500, parseSplit('99,1,0')), { train: [0, 495], valid: [495, 500], test: [500, 500] });
  assert.deepEqual(splitRanges(20, parseSplit('90,5,5')), { train: [0, 18], valid: [18, 19], test: [19, 20] });
  // round(10/3) = 3 three times: 9, shifted by the missing 1 at every boundary after the first.
  assert.deepEqual(splitRanges(10, parseSplit('1,1,1')), { train: [0, 4], valid: [4, 7], test: [7, 10] });
  // 0.5 * 5 = 2.5 rounds to 2 (even): [0, 2, 4, 4], then shifted by 1 to end at 5.
  assert.deepEqual(splitRanges(5, parseSplit('1,1')), { train: [0, 3], valid: [3, 5], test: [5, 5] });
});
