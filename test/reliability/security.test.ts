/**
 * Security: checkpoints are data only (pickled .bin/.pt/.pth/.ckpt are refused, never unpickled), sizes read from
 * headers are bounded before anything is allocated, names read from configs and caches cannot leave their
 * directory, and nothing in the engine listens on a network address (workers talk over the IPC channel).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/checkpoint/load.ts';
import { CheckpointError, ConfigError, DistillError, FormatError } from '../../src/errors.ts';
import { SafetensorsReader } from '../../src/io/safetensors.ts';
import { MegatronIndexedDataset } from '../../src/io/megatronIndexed.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { TeacherCache } from '../../src/io/teacherCache.ts';
import { CacheIncompleteError } from '../../src/cache/fingerprint.ts';
import { MANIFEST_FILE, readManifest, writeManifest } from '../../src/cache/layout.ts';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { ROOT, fixture } from '../helpers/fixtures.ts';

const tmp = (p: string): string => mkdtempSync(join(tmpdir(), p));
const teacherConfig = readFileSync(fixture('llama-teacher', 'config.json'), 'utf8');

test('pickled weights are refused with the conversion command, never read', async () => {
  await selectBackend('cpu', { log: () => {} });
  for (const file of ['pytorch_model.bin', 'model.pt', 'weights.pth', 'last.ckpt']) {
    const dir = tmp('sec-pickle-');
    try {
      writeFileSync(join(dir, 'config.json'), teacherConfig);
      // A pickle whose loading would run code: it must not even be opened.
      writeFileSync(join(dir, file), Buffer.from('\x80\x04cos\nsystem\n(S"touch /tmp/pwned"\ntR.', 'latin1'));
      await assert.rejects(loadModel(dir, { trainable: false }), (e: unknown) => {
        assert.ok(e instanceof CheckpointError, String(e));
        assert.match((e as Error).message, /pickled PyTorch weights .*safe_serialization=True/);
        return true;
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('a sharded index cannot name a shard outside the checkpoint directory', async () => {
  await selectBackend('cpu', { log: () => {} });
  const root = tmp('sec-index-');
  try {
    const dir = join(root, 'ckpt');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), teacherConfig);
    copyFileSync(fixture('llama-teacher', 'model.safetensors'), join(root, 'outside.safetensors'));
    const names = SafetensorsReader.open(fixture('llama-teacher', 'model.safetensors')).names();
    for (const shard of ['../outside.safetensors', '../../etc/passwd', '/etc/passwd', '..\\outside.safetensors', '.', '..', 'sub/../../outside.safetensors']) {
      writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: Object.fromEntries(names.map((n) => [n, shard])) }));
      await assert.rejects(loadModel(dir, { trainable: false }), (e: unknown) => {
        assert.ok(e instanceof FormatError, `${shard}: ${String(e)}`);
        assert.match((e as Error).message, /not a plain file name in the checkpoint directory/);
        return true;
      });
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('sizes from headers are bounded before allocation', () => {
  const dir = tmp('sec-sizes-');
  try {
    // safetensors: a header length of 2^63 - 1.
    const st = Buffer.alloc(16);
    st.writeBigUInt64LE(2n ** 63n - 1n);
    writeFileSync(join(dir, 'huge.safetensors'), st);
    assert.throws(
      () => SafetensorsReader.open(join(dir, 'huge.safetensors')),
      (e: unknown) => e instanceof FormatError && /over the spec's limit/.test((e as Error).message),
    );
    // safetensors: a tensor claiming 2^50 elements in a 100-byte file.
    const header = JSON.stringify({ w: { dtype: 'F32', shape: [2 ** 25, 2 ** 25], data_offsets: [0, 2 ** 52] } });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(join(dir, 'wide.safetensors'), Buffer.concat([len, Buffer.from(header), Buffer.alloc(100)]));
    assert.throws(() => SafetensorsReader.open(join(dir, 'wide.safetensors')), FormatError);
    // Megatron: a sequence count of 2^60 in a 34-byte index.
    const idx = readFileSync(fixture('megatron', 'small_text_document.idx'));
    const bad = Buffer.from(idx.subarray(0, 34));
    bad.writeBigUInt64LE(2n ** 60n, 18);
    writeFileSync(join(dir, 'm.idx'), bad);
    copyFileSync(fixture('megatron', 'small_text_document.bin'), join(dir, 'm.bin'));
    assert.throws(() => new MegatronIndexedDataset(join(dir, 'm')), FormatError);
    // config.json: a vocabulary of 2^40 and a width that would need terabytes.
    const cfg = JSON.parse(teacherConfig) as Record<string, unknown>;
    assert.throws(() => parseModelConfig({ ...cfg, vocab_size: 2 ** 40 }, 'config.json'), ConfigError);
    assert.throws(
      () => parseModelConfig({ ...cfg, hidden_size: 2 ** 20, intermediate_size: 2 ** 24, num_hidden_layers: 2 ** 20 }, 'config.json'),
      DistillError,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a cache manifest naming files outside the cache is refused', async () => {
  await selectBackend('cpu', { log: () => {} });
  const root = tmp('sec-cache-');
  try {
    const out = join(root, 'cache');
    await cacheTeacher({
      teacherPath: fixture('llama-teacher'),
      backend: 'cpu',
      out,
      numSamples: 2,
      partSamples: 1,
      batchSamples: 1,
      log: () => {},
      data: { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 },
      spec: { method: 'topk', topK: 4, samples: 0, sampleSeed: 1, valueDtype: 'float32', temperature: 1 },
    });
    const m = readManifest(join(out, MANIFEST_FILE));
    const part = m.parts[0];
    // The escaping target is a copy of a real part, so that a reader that followed the name would succeed.
    copyFileSync(join(out, part.file), join(root, 'x.arrow'));
    for (const file of ['../x.arrow', join(root, 'x.arrow'), '../../etc/passwd']) {
      writeManifest(join(out, MANIFEST_FILE), { ...m, parts: [{ ...part, file }, ...m.parts.slice(1)] });
      assert.throws(
        () => TeacherCache.open(out),
        (e: unknown) => {
          assert.ok(e instanceof CacheIncompleteError, `${file}: ${String(e)}`);
          assert.match((e as Error).message, /does not describe the parts/);
          return true;
        },
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('nothing listens on a wildcard address: every listen() names its host; single-node workers use the IPC channel', () => {
  const sources: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.ts')) sources.push(p);
    }
  };
  for (const d of ['src', 'operators', 'pipelines']) walk(join(ROOT, d));
  assert.ok(sources.length > 50, `scanned ${sources.length} files`);
  const offenders: string[] = [];
  for (const p of sources) {
    const text = readFileSync(p, 'utf8');
    const file = p.slice(ROOT.length + 1);
    // listen() without a host binds every interface (0.0.0.0 / ::): each call must name one (multi-node rendezvous
    // binds MASTER_ADDR only), and no wildcard literal may be passed to it.
    for (const m of text.matchAll(/\.listen\(([^;]*?)\)\s*[;,]/g)) {
      if (!/host\s*:|127\.0\.0\.1|localhost|'::1'/.test(m[1]) || /0\.0\.0\.0|'::'/.test(m[1])) offenders.push(`${file}: ${m[0].slice(0, 80)}`);
    }
    if (/\b(createSocket|bind)\(\s*\{?\s*(port|\d)/.test(text)) offenders.push(`${file}: a UDP/bound socket`);
  }
  assert.deepEqual(offenders, []);
  const ipc = readFileSync(join(ROOT, 'src/runtime/ipcTransport.ts'), 'utf8');
  assert.match(ipc, /process\.send|\.send\(/, 'the single-node worker transport sends over the IPC channel');
  assert.doesNotMatch(ipc, /node:net|createServer|\.listen\(/);
});
