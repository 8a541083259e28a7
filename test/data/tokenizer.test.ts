import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixture } from '../helpers/fixtures.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { trainByteLevelBpe, WordCounter } from '../../src/data/bpeTrainer.ts';

const expected = JSON.parse(readFileSync(fixture('tokenizer_expected.json'), 'utf8')) as { text: string; ids: number[] }[];

test('tokenization matches the Python tokenizers library id for id', () => {
  const tok = loadTokenizer(fixture('tokenizer.json'));
  assert.equal(tok.vocabSize, 4096);
  assert.equal(tok.eodId, 0);
  assert.equal(tok.sha256, createHash('sha256').update(readFileSync(fixture('tokenizer.json'))).digest('hex'));
  for (const e of expected) {
    assert.deepEqual(tok.encode(e.text), e.ids, e.text);
    assert.equal(tok.decode(e.ids), e.text);
  }
});

test('the BPE trainer writes a tokenizer.json that @huggingface/tokenizers loads, and ids round-trip', () => {
  const corpus = [
    'The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!',
    "It's 1961 -- they'll say \"hello\" (twice) and we've gone.",
    'ünïcödé ✓ and tabs\tand\nnewlines  with  double spaces.',
  ];
  const wc = new WordCounter();
  for (let k = 0; k < 20; k++) for (const t of corpus) wc.add(t);
  const json = trainByteLevelBpe(wc.counts, { vocabSize: 400, specialTokens: ['<|endoftext|>'] });
  assert.equal(json.model.vocab['<|endoftext|>'], 0);
  assert.ok(json.model.merges.length > 50);
  const dir = mkdtempSync(join(tmpdir(), 'bpe-'));
  const p = join(dir, 'tokenizer.json');
  writeFileSync(p, JSON.stringify(json));
  const tok = loadTokenizer(p);
  assert.equal(tok.eodId, 0);
  for (const t of [...corpus, 'Unseen words: zebra, 42, Ω, 😀.', ...expected.map((e) => e.text)]) {
    const ids = tok.encode(t);
    assert.ok(ids.every((i) => i > 0 && i < tok.vocabSize));
    assert.equal(tok.decode(ids), t);
  }
  // Frequent words become single tokens.
  assert.equal(tok.encode(' the').length, 1);
});
