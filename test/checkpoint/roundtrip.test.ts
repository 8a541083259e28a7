/**
 * save → load gives the same model: float32 bit for bit, bfloat16 to bf16 precision; the written files are what
 * transformers expects (names, no tied lm_head, `format: pt` metadata, dtype in config.json). Also sharded loading
 * and the fingerprint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/checkpoint/load.ts';
import { hashModelFiles, saveModel } from '../../src/checkpoint/save.ts';
import type { CausalLM } from '../../src/model/causalLM.ts';
import { encodeSafetensors, readAllSafetensors, SafetensorsReader } from '../../src/io/safetensors.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { fixture, maxAbsDiff, relError } from '../helpers/fixtures.ts';

const tmp = mkdtempSync(join(tmpdir(), 'distill-ckpt-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

async function logitsOf(model: CausalLM, name: string): Promise<Float32Array> {
  const ids = readAllSafetensors(fixture(name, 'expected.safetensors')).get('input_ids')!;
  const t = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
  const l = model.logits(t);
  const d = (await l.data()) as Float32Array;
  tf.dispose([l, t]);
  return d;
}

for (const name of ['gpt2-tiny', 'llama-teacher', 'llama-student']) {
  test(`${name}: float32 save → load gives identical tensors and logits; files as transformers writes them`, async () => {
    await onEachBackend(async (backend) => {
      const model = await loadModel(fixture(name), { trainable: true });
      const out = join(tmp, `${name}-${backend}-f32`);
      await saveModel(model, out, { dtype: 'float32' });
      const reloaded = await loadModel(out, { trainable: true });
      assert.equal(maxAbsDiff(await logitsOf(model, name), await logitsOf(reloaded, name)), 0);

      // Same tensor names, shapes and bytes as the save_pretrained file (a tied lm_head absent in both).
      const ref = readAllSafetensors(fixture(name, 'model.safetensors'));
      const got = readAllSafetensors(join(out, 'model.safetensors'));
      assert.deepEqual([...got.keys()].sort(), [...ref.keys()].sort());
      for (const [n, t] of ref) {
        assert.deepEqual(got.get(n)!.shape, t.shape, n);
        assert.equal(maxAbsDiff(got.get(n)!.data, t.data), 0, n);
      }
      const r = SafetensorsReader.open(join(out, 'model.safetensors'));
      assert.deepEqual(r.metadata, { format: 'pt' });
      r.close();
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(cfg, JSON.parse(readFileSync(fixture(name, 'config.json'), 'utf8')), 'config.json written back unchanged (dtype float32)');
      model.dispose();
      reloaded.dispose();
    });
  });
}

test('bfloat16 save → load matches to bf16 precision and says bfloat16 in config.json', async () => {
  await onEachBackend(async (backend) => {
    const name = 'llama-teacher';
    const model = await loadModel(fixture(name), { trainable: false });
    const out = join(tmp, `${name}-${backend}-bf16`);
    await saveModel(model, out, { dtype: 'bfloat16' });
    const r = SafetensorsReader.open(join(out, 'model.safetensors'));
    assert.ok([...r.entries.values()].every((e) => e.dtype === 'BF16'));
    r.close();
    assert.equal((JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { dtype: string }).dtype, 'bfloat16');
    const reloaded = await loadModel(out, { trainable: false });
    const err = relError(await logitsOf(reloaded, name), await logitsOf(model, name));
    console.log(`bf16 round trip on ${backend}: logits relative error ${err.toExponential(2)}`);
    assert.ok(err < 2e-2 && err > 1e-5, `bf16 logits relative error ${err}`);
    // Each weight is within bf16's half-ulp (2^-9 relative) of the float32 one.
    const w32 = (await model.params.get('model.layers.0.mlp.up_proj.weight')!.data()) as Float32Array;
    const w16 = (await reloaded.params.get('model.layers.0.mlp.up_proj.weight')!.data()) as Float32Array;
    for (let i = 0; i < w32.length; i++) assert.ok(Math.abs(w16[i] - w32[i]) <= Math.abs(w32[i]) * 2 ** -8, `element ${i}`);
    model.dispose();
    reloaded.dispose();
  });
});

test('a sharded checkpoint (model.safetensors.index.json) loads to the same logits', async () => {
  await onEachBackend(async () => {
    const name = 'llama-teacher';
    const dir = join(tmp, 'sharded');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    const all = readAllSafetensors(fixture(name, 'model.safetensors'));
    const names = [...all.keys()].sort();
    const shards = [names.slice(0, 9), names.slice(9)];
    const weightMap: Record<string, string> = {};
    shards.forEach((list, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      for (const n of list) weightMap[n] = file;
      const tensors = list.map((n) => ({ name: n, dtype: 'F32' as const, shape: all.get(n)!.shape, data: all.get(n)!.data }));
      writeFileSync(join(dir, file), encodeSafetensors(tensors, { format: 'pt' }));
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    copyFileSync(fixture(name, 'config.json'), join(dir, 'config.json'));
    const sharded = await loadModel(dir, { trainable: false });
    const single = await loadModel(fixture(name), { trainable: false });
    assert.equal(maxAbsDiff(await logitsOf(sharded, name), await logitsOf(single, name)), 0);
    assert.match(hashModelFiles(dir), /^[0-9a-f]{64}$/);
    sharded.dispose();
    single.dispose();
  });
});

test('hashModelFiles: stable for the same files, different for different weights', async () => {
  const h1 = hashModelFiles(fixture('llama-student'));
  assert.match(h1, /^[0-9a-f]{64}$/);
  assert.equal(hashModelFiles(fixture('llama-student')), h1);
  assert.notEqual(hashModelFiles(fixture('llama-student-after-5-steps')), h1);
  assert.notEqual(hashModelFiles(fixture('llama-teacher')), h1);
});
