import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, FormatError } from '../../src/errors.ts';
import { createSampleSource } from '../../src/data/sampleSource.ts';
import { openTokenDataset } from '../../src/data/dataset.ts';
import { GptSamples } from '../../src/data/samples.ts';
import { writeMegatronIndexed } from '../../src/io/megatronIndexed.ts';
import { ArrowShardWriter } from '../../src/io/arrowShards.ts';
import { fixture } from '../helpers/fixtures.ts';

const SHA = 'cd'.repeat(32);
/** Documents whose tokens encode (document, position), so any sample can be traced back. */
const docs = (n: number, base: number): number[][] => Array.from({ length: n }, (_, d) => Array.from({ length: 5 + ((d * 7) % 13) }, (_, k) => base + d * 20 + k));

function arrow(dir: string, ds: number[][], vocab = 100000, sha = SHA): string {
  const w = new ArrowShardWriter({ outDir: dir, tokenizerSha256: sha, vocabSize: vocab, sourceFiles: [], batchTokens: 50, shardTokens: 200 });
  for (const d of ds) w.addDocument(d);
  w.finish();
  return dir;
}

test('without shuffling, samples are consecutive windows of seq_length+1 overlapping by one token', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  const ds = docs(12, 1000);
  const stream = ds.flat();
  const g = new GptSamples(openTokenDataset(arrow(dir, ds)), { seqLength: 8, seed: 1, range: [0, 12], shuffle: false });
  assert.equal(g.samplesPerEpoch, Math.floor((stream.length - 1) / 8));
  for (let i = 0; i < g.samplesPerEpoch; i++) {
    assert.deepEqual(Array.from(g.sample(i)), stream.slice(8 * i, 8 * i + 9));
  }
  // Epochs repeat.
  assert.deepEqual(g.sample(g.samplesPerEpoch), g.sample(0));
  rmSync(dir, { recursive: true });
});

test('with shuffling: every window of an epoch appears once, epochs differ, seeds are deterministic', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  const ds = docs(30, 1000);
  const d = openTokenDataset(arrow(dir, ds));
  const a = new GptSamples(d, { seqLength: 16, seed: 7, range: [0, 30] });
  const b = new GptSamples(d, { seqLength: 16, seed: 7, range: [0, 30] });
  const c = new GptSamples(d, { seqLength: 16, seed: 8, range: [0, 30] });
  const n = a.samplesPerEpoch;
  const ep0 = Array.from({ length: n }, (_, i) => Array.from(a.sample(i)));
  for (const s of ep0) assert.equal(s.length, 17);
  assert.deepEqual(ep0, Array.from({ length: n }, (_, i) => Array.from(b.sample(i))), 'same seed, same samples');
  assert.notDeepEqual(ep0, Array.from({ length: n }, (_, i) => Array.from(c.sample(i))), 'other seed, other order');
  assert.notDeepEqual(ep0, Array.from({ length: n }, (_, i) => Array.from(a.sample(n + i))), 'next epoch reshuffled');
  // Each epoch predicts n*16 distinct positions: the union of inputs covers n*16 tokens, all distinct (ids are unique).
  const inputs = new Set(ep0.flatMap((s) => s.slice(0, 16)));
  assert.equal(inputs.size, n * 16);
  rmSync(dir, { recursive: true });
});

test('createSampleSource: resume by index gives the same samples; split ranges are disjoint', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(dir, docs(40, 0));
  const opts = { dataPaths: dir, seqLength: 12, split: '80,10,10', seed: 3 };
  const src = createSampleSource({ ...opts, splitName: 'train' });
  const seq = Array.from({ length: 3 * src.numSamples }, (_, i) => Array.from(src.sample(i)));
  const resumed = createSampleSource({ ...opts, splitName: 'train' });
  for (const i of [2 * src.numSamples + 1, 5, src.numSamples, 0]) assert.deepEqual(Array.from(resumed.sample(i)), seq[i], `sample ${i}`);
  const docOf = (t: number): number => Math.floor(t / 20);
  const trainDocs = new Set(seq.flat().map(docOf));
  const valid = createSampleSource({ ...opts, splitName: 'valid' });
  assert.deepEqual(valid.components[0].documents, [32, 36]);
  const validDocs = new Set(Array.from({ length: valid.numSamples }, (_, i) => Array.from(valid.sample(i))).flat().map(docOf));
  for (const d of validDocs) assert.ok(!trainDocs.has(d) && d >= 32 && d < 36, `valid document ${d}`);
  for (const s of [src, resumed, valid]) s.close();
  rmSync(dir, { recursive: true });
});

test('a blend of Arrow and Megatron datasets follows the greedy order', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(join(dir, 'a'), docs(30, 0));
  writeMegatronIndexed(join(dir, 'm'), docs(30, 50000).map((d) => [d.slice(0, 3), d.slice(3)]), 'int32');
  const src = createSampleSource({ dataPaths: `0.3 ${join(dir, 'a')} 0.7 ${join(dir, 'm')}`, seqLength: 10, seed: 1 });
  const from = Array.from({ length: 100 }, (_, i) => (src.sample(i)[0] >= 50000 ? 1 : 0));
  assert.deepEqual(from.slice(0, 10), [1, 0, 1, 1, 0, 1, 1, 0, 1, 1]);
  assert.equal(from.filter((x) => x === 0).length, 30);
  assert.ok(src.numSamples > 0 && src.numSamples <= src.components[0].samplesPerEpoch / 0.3 + 1);
  src.close();
  rmSync(dir, { recursive: true });
});

test('the Megatron fixture works as a sample source', () => {
  const src = createSampleSource({ dataPaths: fixture('megatron', 'small_text_document'), seqLength: 32, vocabSize: 1000 });
  assert.ok(src.numSamples > 10);
  assert.equal(src.sample(3).length, 33);
  src.close();
});

test('a token id >= vocab is refused, naming file, document and token', () => {
  assert.throws(() => {
    const src = createSampleSource({ dataPaths: fixture('megatron', 'wide_text_document'), seqLength: 16, vocabSize: 1000, shuffle: false });
    src.sample(0);
  }, (e: unknown) => e instanceof FormatError && /wide_text_document\.bin/.test(e.message) && /document 0, token 0: id 51182/.test(e.message));
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(dir, docs(5, 0), 4096);
  assert.throws(() => createSampleSource({ dataPaths: dir, seqLength: 4, vocabSize: 1000 }), (e: unknown) => e instanceof FormatError && e.message.includes(dir) && /vocab_size 4096/.test(e.message));
  rmSync(dir, { recursive: true });
});

test('a tokenizer whose hash differs from the shards\' metadata is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(dir, docs(5, 0));
  assert.throws(() => createSampleSource({ dataPaths: dir, seqLength: 4, tokenizerSha256: 'ef'.repeat(32) }), (e: unknown) => e instanceof FormatError && e.message.includes(dir) && /sha256/.test(e.message));
  createSampleSource({ dataPaths: dir, seqLength: 4, tokenizerSha256: SHA }).close();
  rmSync(dir, { recursive: true });
});

test('too little data for one sample is a ConfigError; a missing path too', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(dir, [[1, 2, 3]]);
  const src = createSampleSource({ dataPaths: dir, seqLength: 8 });
  assert.equal(src.numSamples, 0);
  assert.throws(() => src.sample(0), ConfigError);
  assert.throws(() => createSampleSource({ dataPaths: join(dir, 'nope'), seqLength: 8 }), ConfigError);
  rmSync(dir, { recursive: true });
});

test('a blend: a component without train samples is an error; an empty valid split is numSamples 0', () => {
  const dir = mkdtempSync(join(tmpdir(), 'samples-'));
  arrow(join(dir, 'big'), docs(40, 0));
  arrow(join(dir, 'tiny'), docs(2, 0));
  const paths = `1 ${join(dir, 'big')} 1 ${join(dir, 'tiny')}`;
  const valid = createSampleSource({ dataPaths: paths, seqLength: 4, split: '90,10,0', splitName: 'valid' });
  assert.equal(valid.numSamples, 0);
  assert.throws(() => valid.sample(0), ConfigError);
  valid.close();
  assert.throws(() => createSampleSource({ dataPaths: paths, seqLength: 400 }), (e: unknown) => e instanceof ConfigError && e.message.includes('tiny'));
  rmSync(dir, { recursive: true });
});
