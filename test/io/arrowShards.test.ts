import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FormatError } from '../../src/errors.ts';
import { ArrowShardDataset, ArrowShardWriter, shardDtypeFor } from '../../src/io/arrowShards.ts';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'arrow-'));

function randomDocs(n: number, vocab: number, seed = 1): number[][] {
  let s = seed;
  const rnd = (): number => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
  return Array.from({ length: n }, () => Array.from({ length: Math.floor(rnd() * 50) }, () => Math.floor(rnd() * vocab)));
}

function write(dir: string, docs: number[][], vocab: number, batchTokens = 64, shardTokens = 300): string[] {
  const w = new ArrowShardWriter({ outDir: dir, tokenizerSha256: 'ab'.repeat(32), vocabSize: vocab, sourceFiles: ['a.txt'], batchTokens, shardTokens });
  for (const d of docs) w.addDocument(d);
  return w.finish().shards;
}

test('narrowest dtype for the vocabulary', () => {
  assert.equal(shardDtypeFor(256), 'uint8');
  assert.equal(shardDtypeFor(257), 'uint16');
  assert.equal(shardDtypeFor(65536), 'uint16');
  assert.equal(shardDtypeFor(65537), 'uint32');
});

for (const vocab of [200, 4096, 100000]) {
  test(`write -> read round trip over several shards and batches (vocab ${vocab})`, () => {
    const dir = tmp();
    const docs = randomDocs(60, vocab);
    docs.splice(3, 0, []); // an empty document survives too
    const shards = write(dir, docs, vocab);
    assert.ok(shards.length > 2, `several shards (${shards.length})`);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes('.tmp-')),
      [],
      'no temp files left',
    );
    const ds = new ArrowShardDataset(dir);
    assert.equal(ds.numDocuments, docs.length);
    assert.equal(ds.numTokens, docs.flat().length);
    assert.equal(ds.metadata.vocabSize, vocab);
    assert.equal(ds.metadata.dtype, shardDtypeFor(vocab));
    assert.deepEqual(ds.metadata.sourceFiles, ['a.txt']);
    // Random order, to exercise positioned reads and the cache.
    for (const i of [5, 0, docs.length - 1, 3, 17, 42, 1, 30]) {
      assert.deepEqual(Array.from(ds.document(i)), docs[i], `document ${i}`);
      assert.equal(ds.documentLength(i), docs[i].length);
    }
    for (let i = 0; i < docs.length; i++) assert.deepEqual(Array.from(ds.document(i)), docs[i]);
    ds.close();
    rmSync(dir, { recursive: true });
  });
}

test('a rerun with fewer shards removes the older shards', () => {
  const dir = tmp();
  write(dir, randomDocs(60, 1000), 1000);
  write(dir, randomDocs(5, 1000), 1000);
  const ds = new ArrowShardDataset(dir);
  assert.equal(ds.numDocuments, 5);
  rmSync(dir, { recursive: true });
});

test('a token outside the vocabulary is refused by the writer', () => {
  const dir = tmp();
  const w = new ArrowShardWriter({ outDir: dir, tokenizerSha256: 'x', vocabSize: 10, sourceFiles: [] });
  assert.throws(() => w.addDocument([1, 10]), /token 1 is 10/);
  rmSync(dir, { recursive: true });
});

function corrupted(mutate: (b: Buffer) => Buffer | void): void {
  const dir = tmp();
  const [shard] = write(dir, randomDocs(20, 4096), 4096, 1 << 20, 1 << 20);
  const bytes = readFileSync(shard);
  writeFileSync(shard, mutate(bytes) ?? bytes);
  assert.throws(
    () => {
      const ds = new ArrowShardDataset(dir);
      for (let i = 0; i < ds.numDocuments; i++) ds.document(i);
    },
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `FormatError, got ${String(e)}`);
      assert.ok(e.message.includes(shard), e.message);
      return true;
    },
  );
  rmSync(dir, { recursive: true });
}

test('flipped bytes in the token values are a FormatError naming the file', () =>
  corrupted((b) => {
    // The token buffer sits in the body of the only record batch, well before the footer: flip one byte in it.
    const i = b.length - 700;
    b[i] ^= 0x5a;
  }));
test('flipped bytes across the whole body are a FormatError', () =>
  corrupted((b) => {
    for (let i = 400; i < b.length - 400; i += 37) b[i] ^= 0xff;
  }));
test('flipped magic is a FormatError', () =>
  corrupted((b) => {
    b[1] ^= 0xff;
  }));
test('a truncated shard is a FormatError', () => corrupted((b) => b.subarray(0, b.length - 100)));
test('flipped bytes in the footer are a FormatError', () =>
  corrupted((b) => {
    for (let i = b.length - 60; i < b.length - 12; i++) b[i] ^= 0xff;
  }));
