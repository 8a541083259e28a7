/**
 * Peak memory of the chunked KD forward + backward (KD + CE, d/d hidden and d/d head) at Qwen's vocabulary
 * V = 151,936, chunk 128, on wasm (cpu is slower still): it must stay a few [chunk, V] tensors above the inputs,
 * independent of the number of tokens T, far below the [T, V] logits (1.2 GB at T = 2048).
 *
 * One [128, V] chunk costs ~10 s of wasm time on a shared 2-core machine, so the default run uses T = 256 (two
 * chunks) at the full vocabulary and shows T-independence at a smaller vocabulary; set DISTILL_MEMORY_TEST_TOKENS=2048
 * for the full-size run (about 2.5 minutes here).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { profileChunkedKd, type ChunkedKdProfile } from '../../src/losses/memoryProfile.ts';

const QWEN_VOCAB = 151_936;
const CHUNK = 128;
const HIDDEN = 64;
const mb = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** Bytes above the inputs, in [chunk, V] units. */
const chunksAbove = (p: ChunkedKdProfile): number => (p.peakBytes - p.inputBytes) / p.chunkBytes;

/** The bound: d/d head [V, h] accumulating (old + new + sum) plus five [chunk, V] float32 tensors alive at once. */
function bound(p: ChunkedKdProfile, vocab: number): number {
  return p.inputBytes + 3 * vocab * HIDDEN * 4 + 5 * p.chunkBytes;
}

test('chunked KD at V = 151,936, chunk 128: peak memory a few [chunk, V] above the inputs', async () => {
  await selectBackend('wasm', { log: null });
  const tokens = Number(process.env.DISTILL_MEMORY_TEST_TOKENS ?? 256);
  const before = tf.memory().numTensors;
  const p = await profileChunkedKd({ vocab: QWEN_VOCAB, tokens, hidden: HIDDEN, chunkSize: CHUNK });
  console.log(
    `T ${tokens}: peak ${mb(p.peakBytes)} = inputs ${mb(p.inputBytes)} + ${chunksAbove(p).toFixed(2)} × [128, V] ` +
      `(${mb(p.chunkBytes)} each); [T, V] logits alone would be ${mb(p.fullLogitsBytes)} ` +
      `(${mb(2048 * QWEN_VOCAB * 4)} at T 2048); forward + backward ${(p.ms / 1000).toFixed(1)} s; loss ${p.loss.toFixed(4)}`,
  );
  assert.ok(Number.isFinite(p.loss));
  assert.ok(p.peakBytes <= bound(p, QWEN_VOCAB), `peak ${mb(p.peakBytes)} above the bound ${mb(bound(p, QWEN_VOCAB))}`);
  assert.ok(p.peakBytes < (2048 * QWEN_VOCAB * 4) / 2, 'far below one [2048, V] logits tensor');
  assert.equal(tf.memory().numTensors, before, 'tensors leaked');
});

test('the peak does not grow with the number of tokens (T 128 vs 1024 at V = 8192)', async () => {
  await selectBackend('wasm', { log: null });
  const vocab = 8192;
  const small = await profileChunkedKd({ vocab, tokens: 128, hidden: HIDDEN, chunkSize: CHUNK });
  const large = await profileChunkedKd({ vocab, tokens: 1024, hidden: HIDDEN, chunkSize: CHUNK });
  console.log(`V 8192: above the inputs ${chunksAbove(small).toFixed(2)} chunks at T 128, ${chunksAbove(large).toFixed(2)} at T 1024`);
  // Only [T, h] tensors grow with T: the saved copies of the student's and teacher's hidden states, d/d hidden's
  // chunks and their concatenation. They are the size of the hidden states themselves, not of the logits.
  const slack = 5 * 1024 * HIDDEN * 4;
  assert.ok(large.peakBytes - large.inputBytes <= small.peakBytes - small.inputBytes + slack);
  assert.ok(large.peakBytes <= bound(large, vocab));
});
