/**
 * noSamplesMessage: why a split yields no sample of seq_length + 1 tokens, with the numbers to act on (issue 23,
 * item 2): the tokens and documents each dataset's part holds, and the longest --seq_length the data allows (for a
 * blend, the shortest component bounds it, since every component must give samples).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSampleSource, noSamplesMessage } from '../../src/data/sampleSource.ts';
import { fixture } from '../helpers/fixtures.ts';

const small = fixture('megatron', 'small_text_document');
const wide = fixture('megatron', 'wide_text_document');

test('one dataset: its tokens, the tokens a sample needs, and the longest seq_length that gives one', () => {
  const s = createSampleSource({ dataPaths: small, seqLength: 2048 });
  try {
    assert.equal(s.numSamples, 0);
    assert.deepEqual(s.componentTokens, [414]);
    const m = noSamplesMessage(s, { split: '100,0,0', splitName: 'train' });
    assert.equal(m, `no sample of --seq_length 2048 + 1 = 2049 tokens in the train split (--split 100,0,0): ${small} holds 414 tokens in 20 documents. Use --seq_length 413 or less, more data, or a larger train share of --split.`);
  } finally {
    s.close();
  }
  // 413 is indeed the longest that gives a sample.
  for (const [seq, samples] of [[413, 1], [414, 0]] as const) {
    const t = createSampleSource({ dataPaths: small, seqLength: seq });
    assert.equal(t.numSamples, samples, `seq_length ${seq}`);
    t.close();
  }
});

test('a blend is bounded by its shortest component; a split without documents says to give it some', () => {
  const s = createSampleSource({ dataPaths: `${small} ${wide}`, seqLength: 5000, split: '1,0,0', splitName: 'train' });
  try {
    const [a, b] = s.componentTokens;
    const m = noSamplesMessage(s, { split: '1,0,0', splitName: 'train' });
    assert.match(m, new RegExp(`${small} holds ${a} tokens in 20 documents; ${wide} holds ${b} tokens in 7 documents\\. Use --seq_length ${Math.min(a, b) - 1} or less`));
  } finally {
    s.close();
  }
  const v = createSampleSource({ dataPaths: small, seqLength: 16, split: '99,1,0', splitName: 'valid' });
  try {
    assert.equal(noSamplesMessage(v, { split: '99,1,0', splitName: 'valid', part: 'the held-out data' }),
      `no sample of --seq_length 16 + 1 = 17 tokens in the held-out data: ${small} holds 0 tokens in 0 documents. Give it more data.`);
  } finally {
    v.close();
  }
});
