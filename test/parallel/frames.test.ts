/**
 * msgpackr frames of worker messages: tensors keep dtype, shape and bits (including from unaligned views), every
 * message kind round-trips, and a frame that is not a message is refused with a clear error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { decodeMessage, encodeMessage } from '../../src/runtime/frameCodec.ts';
import { arrayToFrame, frameToArray, frameToTensor, tensorToFrame } from '../../src/parallel/tensorFrame.ts';
import type { RingChunk, StepMessage, TeacherRequest } from '../../src/runtime/messages.ts';
import { Packr } from 'msgpackr';

test('a float32 tensor frame round-trips bit for bit, from an unaligned view of a larger buffer', () => {
  const backing = new Float32Array([9, 1.5, -0, Number.NaN, 3.4028234663852886e38, 1e-45, 7]);
  const view = backing.subarray(1, 6);
  const m: RingChunk = { kind: 'ring', tag: 12, chunk: 1, data: arrayToFrame(view, [5]) };
  const back = decodeMessage(encodeMessage(m)) as RingChunk;
  assert.equal(back.kind, 'ring');
  assert.equal(back.tag, 12);
  const arr = frameToArray(back.data);
  assert.ok(arr instanceof Float32Array);
  assert.deepEqual(new Uint8Array(arr.buffer), new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
});

test('int32 tensors keep dtype and shape through tensorToFrame / frameToTensor', async () => {
  await tf.setBackend('cpu');
  const t = tf.tensor2d(
    [
      [1, 2, 3],
      [-4, 2147483647, -2147483648],
    ],
    [2, 3],
    'int32',
  );
  const m: TeacherRequest = { kind: 'teacherRequest', id: 3, inputIds: await tensorToFrame(t) };
  const back = decodeMessage(encodeMessage(m)) as TeacherRequest;
  const u = frameToTensor(back.inputIds);
  assert.equal(u.dtype, 'int32');
  assert.deepEqual(u.shape, [2, 3]);
  assert.deepEqual(await u.array(), await t.array());
  t.dispose();
  u.dispose();
});

test('control messages carry plain data, absent fields included', () => {
  const m: StepMessage = {
    kind: 'step',
    result: { step: 4, loss: 1.25, kdLoss: 0.5, ceLoss: undefined, gradNorm: 0.1, lr: 1e-3, tokens: 32, samplesSeen: 10, skipped: false, elapsedMs: 12.5 },
  };
  const back = decodeMessage(encodeMessage(m)) as StepMessage;
  assert.deepEqual(back.result, m.result);
});

test('a frame that is not a message, or a truncated tensor, is refused with a message saying what it is', () => {
  const junk = new Packr({ useRecords: false }).pack({ hello: 1 });
  assert.throws(() => decodeMessage(junk), /is not a message/);
  assert.throws(() => frameToArray({ dtype: 'float32', shape: [4], bytes: new Uint8Array(12) }), /12 bytes for shape \[4\].*truncated/);
  assert.throws(() => arrayToFrame(new Float32Array(3), [2, 2]), /holds 4 values, the array 3/);
});
