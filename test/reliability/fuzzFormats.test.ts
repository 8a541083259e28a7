/**
 * Bad input, fuzzed (files): seeded mutations of safetensors (bytes and header fields), Megatron .idx/.bin, Arrow
 * token shards and teacher-cache parts. Each case is opened and read whole; it must succeed or throw a DistillError,
 * never crash, hang or allocate what a header claims. The counts are printed for the README.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeSafetensors, SafetensorsReader } from '../../src/io/safetensors.ts';
import { MegatronIndexedDataset } from '../../src/io/megatronIndexed.ts';
import { ArrowShardDataset, ArrowShardWriter } from '../../src/io/arrowShards.ts';
import { TeacherCache } from '../../src/io/teacherCache.ts';
import { MANIFEST_FILE } from '../../src/cache/layout.ts';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { spawnSync } from 'node:child_process';
import { ROOT, fixture } from '../helpers/fixtures.ts';
import { arrowBodies, fuzz, mutateArrowBody, mutateBytes, mutateJson, pick, randInt, type FuzzReport } from './fuzz.ts';

const root = mkdtempSync(join(tmpdir(), 'fuzz-formats-'));
const reports: Record<string, FuzzReport> = {};
const check = (name: string, r: FuzzReport): void => {
  reports[name] = r;
  assert.deepEqual(r.failures, [], r.failures.join('\n\n'));
};

test.after(() => {
  rmSync(root, { recursive: true, force: true });
  const total = Object.values(reports).reduce((n, r) => n + r.cases, 0);
  process.stdout.write(
    `# fuzz (files): ${total} cases: ${Object.entries(reports)
      .map(([k, r]) => `${k} ${r.cases} (${r.ok} ok, ${r.refused} refused, slowest ${r.slowestMs.toFixed(0)} ms)`)
      .join('; ')}\n`,
  );
});

function readSafetensorsWhole(path: string): void {
  const r = SafetensorsReader.open(path);
  try {
    for (const n of r.names()) r.read(n);
  } finally {
    r.close();
  }
}

const SAMPLE_ST = encodeSafetensors(
  [
    { name: 'a.weight', dtype: 'F32', shape: [3, 4], data: Float32Array.from({ length: 12 }, (_, i) => i / 7) },
    { name: 'b.bias', dtype: 'BF16', shape: [5], data: Float32Array.from([1, -2, 3.5, 1e-3, 65504]) },
    { name: 'c.ids', dtype: 'I64', shape: [2, 2], data: Int32Array.from([1, -1, 2 ** 30, 0]) },
    { name: 'd.count', dtype: 'I32', shape: [], data: Int32Array.from([42]) },
  ],
  { step: '3' },
);

test('fuzz: safetensors bytes and header fields', async () => {
  const path = join(root, 'x.safetensors');
  const headerLen = Number(SAMPLE_ST.readBigUInt64LE(0));
  const header = JSON.parse(SAMPLE_ST.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  const data = SAMPLE_ST.subarray(8 + headerLen);
  check(
    'safetensors',
    await fuzz('safetensors', 1, 2400, (rng) => {
      let bytes: Buffer;
      if (rng() < 0.5) bytes = mutateBytes(SAMPLE_ST, rng, 8 + headerLen);
      else {
        // Header-field mutations (dtype, shape, data_offsets, __metadata__), re-framed with a correct length.
        let h = header;
        for (let k = 1 + randInt(rng, 3); k > 0; k--) h = mutateJson(h, rng);
        if (rng() < 0.2)
          h = {
            ...h,
            [pick(rng, Object.keys(header))]: {
              dtype: pick(rng, ['F32', 'F16', 'BF16', 'U64', 'F8_E4M3', 'f32']),
              shape: [randInt(rng, 2 ** 20), 2 ** randInt(rng, 40)],
              data_offsets: [0, 2 ** randInt(rng, 60)],
            },
          };
        const json = Buffer.from(JSON.stringify(h));
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(json.length));
        bytes = Buffer.concat([len, json, rng() < 0.8 ? data : data.subarray(0, randInt(rng, data.length))]);
      }
      writeFileSync(path, bytes);
      readSafetensorsWhole(path);
    }),
  );
});

test('fuzz: Megatron .idx / .bin', async () => {
  const idx = readFileSync(fixture('megatron', 'small_text_document.idx'));
  const bin = readFileSync(fixture('megatron', 'small_text_document.bin'));
  const prefix = join(root, 'm');
  check(
    'megatron',
    await fuzz('megatron', 2, 2000, (rng) => {
      const which = rng();
      writeFileSync(`${prefix}.idx`, which < 0.8 ? mutateBytes(idx, rng, 34) : idx);
      writeFileSync(`${prefix}.bin`, which >= 0.6 ? mutateBytes(bin, rng) : bin);
      const ds = new MegatronIndexedDataset(prefix);
      try {
        for (let d = 0; d < ds.numDocuments; d++) {
          ds.documentLength(d);
          ds.document(d);
        }
      } finally {
        ds.close();
      }
    }),
  );
});

test('fuzz: Arrow token shards', async () => {
  const src = join(root, 'shards-src');
  const w = new ArrowShardWriter({ outDir: src, tokenizerSha256: 'a'.repeat(64), vocabSize: 1000, sourceFiles: ['x.txt'], batchTokens: 40 });
  for (let d = 0; d < 12; d++) w.addDocument(Array.from({ length: 5 + d * 3 }, (_, i) => (d * 37 + i * 11) % 1000));
  w.finish();
  const shard = readdirSync(src).find((f) => f.endsWith('.arrow'))!;
  const clean = readFileSync(join(src, shard));
  const bodies = arrowBodies(clean);
  const dir = join(root, 'shards');
  mkdirSync(dir);
  check(
    'arrow-shards',
    await fuzz('arrow-shards', 3, 1000, (rng) => {
      writeFileSync(join(dir, shard), mutateArrowBody(clean, rng, bodies));
      const ds = new ArrowShardDataset(dir);
      try {
        for (let d = 0; d < ds.numDocuments; d++) ds.document(d);
      } finally {
        ds.close();
      }
    }),
  );
});

test('fuzz: teacher-cache parts and manifest', async () => {
  const src = join(root, 'cache-src');
  await cacheTeacher({
    teacherPath: fixture('llama-teacher'),
    backend: 'cpu',
    out: src,
    numSamples: 2,
    partSamples: 2,
    batchSamples: 1,
    log: () => {},
    data: { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 },
    spec: { method: 'sample', topK: 0, samples: 20, sampleSeed: 1, valueDtype: 'uint8', temperature: 1 },
  });
  const part = readdirSync(src).find((f) => f.startsWith('part-'))!;
  const cleanPart = readFileSync(join(src, part));
  const cleanManifest = readFileSync(join(src, MANIFEST_FILE));
  const bodies = arrowBodies(cleanPart);
  const dir = join(root, 'cache');
  mkdirSync(dir);
  check(
    'cache-parts',
    await fuzz('cache-parts', 4, 1000, (rng) => {
      const onManifest = rng() < 0.2;
      writeFileSync(join(dir, part), onManifest ? cleanPart : mutateArrowBody(cleanPart, rng, bodies));
      rmSync(join(dir, MANIFEST_FILE), { force: true });
      if (onManifest) writeFileSync(join(dir, MANIFEST_FILE), mutateBytes(cleanManifest, rng, cleanManifest.length));
      const c = TeacherCache.open(dir);
      try {
        c.rowsOf([0, 1]);
      } finally {
        c.close();
      }
    }),
  );
});

/**
 * Found by this fuzzer: four flipped bytes inside the schema flatbuffer of a token shard (a vector length) made
 * apache-arrow allocate until the heap was exhausted. src/io/arrowGuard.ts now bounds every metadata length first.
 * Run in a child with a 256 MB heap and a 30 s limit so that a regression cannot take the suite down.
 */
test('a shard whose schema flatbuffer claims a huge vector is refused, not decoded until out of memory', async () => {
  const src = join(root, 'oom-src');
  const w = new ArrowShardWriter({ outDir: src, tokenizerSha256: 'a'.repeat(64), vocabSize: 1000, sourceFiles: ['x.txt'], batchTokens: 40 });
  for (let d = 0; d < 12; d++) w.addDocument(Array.from({ length: 5 + d * 3 }, (_, i) => (d * 37 + i * 11) % 1000));
  w.finish();
  const shard = readdirSync(src).find((f) => f.endsWith('.arrow'))!;
  const bad = readFileSync(join(src, shard));
  bad.set([78, 190, 10, 80], 95); // fuzz case arrow-shards 143 of seed 3 before the body-only restriction
  const dir = join(root, 'oom');
  mkdirSync(dir);
  writeFileSync(join(dir, shard), bad);
  const code = `import { ArrowShardDataset } from ${JSON.stringify(join(ROOT, 'src/io/arrowShards.ts'))};
    import { DistillError } from ${JSON.stringify(join(ROOT, 'src/errors.ts'))};
    try { new ArrowShardDataset(${JSON.stringify(dir)}); process.exit(0); } catch (e) { process.exit(e instanceof DistillError ? 2 : 1); }`;
  const r = spawnSync(process.execPath, ['--max-old-space-size=256', '--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT,
    timeout: 30_000,
    encoding: 'utf8',
  });
  assert.equal(r.status, 2, `child ended with status ${r.status}, signal ${r.signal}: ${r.stderr.split('\n').find((l) => /FATAL|Error/.test(l)) ?? ''}`);
});
