/**
 * Vocabulary alignment: the shared range and its note, and the tokenizer check that refuses to distil across
 * vocabularies that give a shared id different tokens (read from the fixture tokenizer.json).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fixture } from '../helpers/fixtures.ts';
import { checkVocabulariesAgree, readTokenizerVocab, sharedVocab, VocabularyMismatchError } from '../../src/losses/vocabAlignment.ts';
import { FormatError } from '../../src/errors.ts';

test('sharedVocab: min of the two sizes, a note only when they differ', () => {
  assert.deepEqual(sharedVocab(1000, 1000), { size: 1000, note: null });
  const qwen = sharedVocab(152064, 151936);
  assert.equal(qwen.size, 151936);
  assert.match(qwen.note ?? '', /teacher 152064, student 151936.*\[0, 151936\).*teacher's last 128/);
  assert.equal(sharedVocab(100, 120).size, 100);
});

test('checkVocabulariesAgree: the same tokenizer agrees; a padded superset agrees on the shared ids', () => {
  const path = fixture('tokenizer.json');
  const vocab = readTokenizerVocab(path);
  assert.equal(vocab.size, 4096);
  assert.equal(vocab.get(0), '<|endoftext|>');
  checkVocabulariesAgree(path, path);
  const larger = new Map(vocab);
  for (let id = 4096; id < 4224; id++) larger.set(id, `<pad_${id}>`);
  checkVocabulariesAgree(larger, path);
  checkVocabulariesAgree(larger, vocab, 4096);
});

test('checkVocabulariesAgree: refuses, naming the first differing id', () => {
  const path = fixture('tokenizer.json');
  const vocab = readTokenizerVocab(path);
  const other = new Map(vocab);
  other.set(1234, 'not-the-same');
  other.set(2000, 'also-different');
  assert.throws(
    () => checkVocabulariesAgree(path, other),
    (e: unknown) => e instanceof VocabularyMismatchError && /at id 1234\b/.test(String(e)) && /not-the-same/.test(String(e)),
  );
  const missing = new Map(vocab);
  missing.delete(17);
  assert.throws(() => checkVocabulariesAgree(vocab, missing), /id 17: .*\(no token\)/);
  assert.throws(() => readTokenizerVocab(fixture('expected.json')), FormatError);
});
