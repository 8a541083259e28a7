import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultDataPaths, defaultTokenizerPath } from '../../src/data/defaults.ts';
import { createSampleSource } from '../../src/data/sampleSource.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { brownDocument, detokenize } from '../../src/data/brownText.ts';

test('Brown detokenization: tags stripped, English spacing, quotes', () => {
  assert.equal(detokenize(['``', 'Only', 'a', 'handful', "''", ',', 'the', 'jury', 'said', '(', 'twice', ')', '.']), '"Only a handful", the jury said (twice).');
  assert.equal(brownDocument('\n\n\tThe/at jury/nn said/vbd ./.\nIt/pps ended/vbd ./.\n\n\tNew/jj para/nn ;/. 1/2/cd\n'), 'The jury said. It ended.\nNew para; 1/2');
});

test('the shipped Brown dataset loads with no arguments and its tokenizer', () => {
  const tok = loadTokenizer(defaultTokenizerPath());
  assert.equal(tok.vocabSize, 4096);
  assert.equal(tok.eodId, 0);
  const src = createSampleSource({ dataPaths: defaultDataPaths(), seqLength: 128, split: '99,1,0', vocabSize: tok.vocabSize, tokenizerSha256: tok.sha256, seed: 1 });
  assert.ok(src.numSamples > 10_000, `${src.numSamples} samples`);
  const s = src.sample(12_345);
  assert.equal(s.length, 129);
  assert.match(tok.decode(s), /[a-z]+ [a-z]+/);
  const valid = createSampleSource({ dataPaths: defaultDataPaths(), seqLength: 128, split: '99,1,0', splitName: 'valid', vocabSize: tok.vocabSize });
  assert.deepEqual(valid.components[0].documents, [495, 500]);
  src.close();
  valid.close();
});
