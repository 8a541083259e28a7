import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fixture } from '../helpers/fixtures.ts';
import { ConfigError, FormatError } from '../../src/errors.ts';
import { prepare } from '../../src/cli/prepare.ts';
import { dataDumpMain } from '../../src/cli/dataDump.ts';
import { openTokenDataset } from '../../src/data/dataset.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { readLines } from '../../src/data/textSources.ts';

const texts = (JSON.parse(readFileSync(fixture('tokenizer_expected.json'), 'utf8')) as { text: string }[]).map((e) => e.text).filter((t) => !t.includes('\n'));

test('prepare on text and JSONL gives shards equal to direct tokenization (+EOD)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prepare-'));
  writeFileSync(join(dir, 'a.txt'), texts.join('\n') + '\n\n');
  writeFileSync(join(dir, 'b.jsonl'), texts.map((t, i) => JSON.stringify({ id: i, body: t })).join('\r\n'));
  const out = join(dir, 'shards');
  const log = console.log;
  console.log = () => {};
  let r;
  try {
    r = prepare(['--input', `${join(dir, 'a.txt')},${join(dir, 'b.jsonl')}`, '--tokenizer', fixture('tokenizer.json'), '--out', out, '--append_eod', '--text_key', 'body', '--shard_tokens', '100', '--batch_tokens', '30', '--quiet']);
  } finally {
    console.log = log;
  }
  assert.ok(r && r.shards.length > 1);
  const tok = loadTokenizer(fixture('tokenizer.json'));
  const ds = openTokenDataset(out, { tokenizerSha256: tok.sha256 });
  const all = [...texts, ...texts];
  assert.equal(ds.numDocuments, all.length);
  assert.equal(ds.vocabSize, 4096);
  all.forEach((t, i) => assert.deepEqual(Array.from(ds.document(i)), [...tok.encode(t), 0], `document ${i}`));
  ds.close();
  rmSync(dir, { recursive: true });
});

test('prepare --document_per_file, and its errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prepare-'));
  writeFileSync(join(dir, 'a.txt'), 'line one\nline two\n');
  writeFileSync(join(dir, 'bad.jsonl'), '{"text": "ok"}\n{"txt": "no"}\n');
  const tk = fixture('tokenizer.json');
  const log = console.log;
  console.log = () => {};
  try {
    prepare(['--input', join(dir, 'a.txt'), '--tokenizer', tk, '--out', join(dir, 'o'), '--document_per_file', '--quiet']);
    const ds = openTokenDataset(join(dir, 'o'));
    assert.equal(ds.numDocuments, 1);
    assert.deepEqual(Array.from(ds.document(0)), loadTokenizer(tk).encode('line one\nline two\n'));
    ds.close();
    assert.throws(() => prepare(['--input', join(dir, 'bad.jsonl'), '--tokenizer', tk, '--out', join(dir, 'p'), '--quiet']),
      (e: unknown) => e instanceof FormatError && /bad\.jsonl: line 2: no string field "text"/.test(e.message));
    assert.throws(() => prepare(['--input', join(dir, 'nope.txt'), '--tokenizer', tk, '--out', join(dir, 'p')]), ConfigError);
    assert.throws(() => prepare(['--input', join(dir, 'a.txt'), '--out', join(dir, 'p')]), ConfigError);
  } finally {
    console.log = log;
  }
  rmSync(dir, { recursive: true });
});

test('readLines never cuts a multi-byte character at a chunk boundary', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lines-'));
  const lines = ['ünïcödé ✓ 😀', '', 'abc', '✓✓✓✓✓✓✓'];
  writeFileSync(join(dir, 'u.txt'), lines.join('\n'));
  for (const chunk of [1, 2, 3, 5, 7, 64]) assert.deepEqual([...readLines(join(dir, 'u.txt'), chunk)].map((l) => l.line), lines);
  rmSync(dir, { recursive: true });
});

test('data dump prints Megatron documents with their sequences, as the fixture lists them', async () => {
  const exp = JSON.parse(readFileSync(fixture('megatron', 'small_text_document.expected.json'), 'utf8')) as { documents: number[][][] };
  const out = new PassThrough();
  const chunks: string[] = [];
  out.on('data', (c: Buffer) => chunks.push(c.toString()));
  await dataDumpMain(['--data_paths', fixture('megatron', 'small_text_document'), '--limit', '5'], out);
  const got = chunks.join('').trim().split('\n').map((l) => JSON.parse(l) as { document: number; sequences: number[][] });
  assert.deepEqual(got, exp.documents.slice(0, 5).map((sequences, document) => ({ document, sequences })));
});
