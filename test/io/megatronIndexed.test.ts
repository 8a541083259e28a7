import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixture } from '../helpers/fixtures.ts';
import { FormatError } from '../../src/errors.ts';
import { MegatronIndexedDataset, writeMegatronIndexed, type MegatronDtype } from '../../src/io/megatronIndexed.ts';

interface Expected {
  dtype: string;
  vocab: number;
  documents: number[][][];
  document_indices: number[];
}

for (const name of ['small_text_document', 'wide_text_document']) {
  test(`megatron fixture ${name} reads exactly as Megatron does`, () => {
    const exp = JSON.parse(readFileSync(fixture('megatron', `${name}.expected.json`), 'utf8')) as Expected;
    const ds = new MegatronIndexedDataset(fixture('megatron', name));
    try {
      assert.equal(ds.dtype, exp.dtype);
      assert.deepEqual(Array.from(ds.documentIndices), exp.document_indices);
      assert.equal(ds.numDocuments, exp.documents.length);
      for (let i = 0; i < ds.numDocuments; i++) {
        assert.deepEqual(
          ds.documentSequences(i).map((s) => Array.from(s)),
          exp.documents[i],
          `document ${i}`,
        );
        assert.equal(ds.documentLength(i), exp.documents[i].flat().length);
        assert.deepEqual(Array.from(ds.document(i)), exp.documents[i].flat());
      }
    } finally {
      ds.close();
    }
  });
}

const tmp = (): string => mkdtempSync(join(tmpdir(), 'megatron-'));
// Two documents of several sentences each, and an empty sequence: the sentence-split layout.
const DOCS = [
  [
    [1, 2, 3],
    [4, 5],
  ],
  [[6], [], [7, 8, 9, 10]],
  [[11, 12]],
];

for (const dtype of ['uint8', 'int8', 'int16', 'int32', 'int64', 'float64', 'float32', 'uint16'] as MegatronDtype[]) {
  test(`writer -> reader round trip, dtype ${dtype}`, () => {
    const dir = tmp();
    const p = join(dir, 'ds');
    const docs = dtype === 'int8' || dtype === 'uint8' ? DOCS : [...DOCS, [[30000, 0, 127]]];
    writeMegatronIndexed(p, docs, dtype);
    const ds = new MegatronIndexedDataset(p);
    assert.equal(ds.dtype, dtype);
    assert.equal(ds.numDocuments, docs.length);
    assert.equal(ds.numSequences, docs.flat().length);
    for (let i = 0; i < docs.length; i++)
      assert.deepEqual(
        ds.documentSequences(i).map((s) => Array.from(s)),
        docs[i],
      );
    ds.close();
    rmSync(dir, { recursive: true });
  });
}

function corrupt(mutate: (idx: Buffer, p: string) => Buffer | void, match: RegExp): void {
  const dir = tmp();
  const p = join(dir, 'ds');
  writeMegatronIndexed(p, DOCS, 'uint16');
  const idx = readFileSync(`${p}.idx`);
  const out = mutate(idx, p) ?? idx;
  writeFileSync(`${p}.idx`, out);
  assert.throws(
    () => new MegatronIndexedDataset(p),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, String(e));
      assert.ok(e.message.includes(`${p}.`), `names the file: ${e.message}`);
      assert.match(e.message, match);
      return true;
    },
  );
  rmSync(dir, { recursive: true });
}

test('wrong magic is a FormatError naming the file', () =>
  corrupt((b) => {
    b[0] = 0x58;
  }, /magic at byte 0/));
test('wrong version is a FormatError', () =>
  corrupt((b) => {
    b[9] = 2;
  }, /version at byte 9: found 2, expected 1/));
test('unknown dtype code is a FormatError', () =>
  corrupt((b) => {
    b[17] = 9;
  }, /dtype code at byte 17: found 9/));
test('truncated .idx is a FormatError', () => corrupt((b) => b.subarray(0, b.length - 3), /truncated/));
test('truncated header is a FormatError', () => corrupt((b) => b.subarray(0, 20), /truncated header/));
test('pointer past end of .bin is a FormatError', () =>
  corrupt((b) => {
    const S = 6;
    b.writeBigInt64LE(10_000n, 34 + 4 * S + 8 * 2);
  }, /pointer out of range .*\.bin/));
test('non-monotonic document indices are a FormatError', () =>
  corrupt((b) => {
    const S = 6;
    b.writeBigInt64LE(1n, 34 + 12 * S + 8 * 2);
  }, /document index/));
test('document indices not ending at S are a FormatError', () =>
  corrupt((b) => {
    const S = 6;
    b.writeBigInt64LE(5n, 34 + 12 * S + 8 * 3);
  }, /expected 6/));
test('truncated .bin is a FormatError naming the .bin', () => {
  const dir = tmp();
  const p = join(dir, 'ds');
  writeMegatronIndexed(p, DOCS, 'int32');
  writeFileSync(`${p}.bin`, readFileSync(`${p}.bin`).subarray(0, 8));
  assert.throws(
    () => new MegatronIndexedDataset(p),
    (e: unknown) => e instanceof FormatError && e.message.includes('ds.bin'),
  );
  rmSync(dir, { recursive: true });
});
