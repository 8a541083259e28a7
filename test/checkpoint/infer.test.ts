/** `distill infer` end to end: fixture ids in, logits out, compared with transformers' logits. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inferMain } from '../../src/cli/infer.ts';
import { ConfigError, FormatError } from '../../src/errors.ts';
import { readAllSafetensors, writeSafetensors } from '../../src/io/safetensors.ts';
import { fixture, relError } from '../helpers/fixtures.ts';

const tmp = mkdtempSync(join(tmpdir(), 'distill-infer-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

for (const backend of ['cpu', 'wasm']) {
  test(`inferMain writes the fixture's logits (llama-teacher, ${backend}, ids given as int64)`, async () => {
    const expected = readAllSafetensors(fixture('llama-teacher', 'expected.safetensors'));
    const ids = expected.get('input_ids')!;
    // transformers' tokenizers hand out int64 ids: the command must take them.
    const idsPath = join(tmp, `ids-${backend}.safetensors`);
    writeSafetensors(idsPath, [{ name: 'input_ids', dtype: 'I64', shape: ids.shape, data: ids.data }]);
    const out = join(tmp, `logits-${backend}.safetensors`);
    await inferMain(['--model', fixture('llama-teacher'), '--ids', idsPath, '--out', out, `--backend=${backend}`]);
    const logits = readAllSafetensors(out).get('logits')!;
    assert.equal(logits.dtype, 'float32');
    assert.deepEqual(logits.shape, [2, 17, 1000]);
    const err = relError(logits.data, expected.get('logits')!.data);
    console.log(`distill infer on ${backend}: relative error ${err.toExponential(2)}`);
    assert.ok(err <= 1e-5, `relative error ${err}`);
  });
}

test('inferMain: the fixture expected.safetensors (int32 ids) works as --ids directly (gpt2-tiny)', async () => {
  const out = join(tmp, 'gpt2.safetensors');
  await inferMain(['--model', fixture('gpt2-tiny'), '--ids', fixture('gpt2-tiny', 'expected.safetensors'), '--out', out, '--backend', 'wasm']);
  const err = relError(readAllSafetensors(out).get('logits')!.data, readAllSafetensors(fixture('gpt2-tiny', 'expected.safetensors')).get('logits')!.data);
  assert.ok(err <= 1e-5, `relative error ${err}`);
});

test('inferMain: missing flags and a file without input_ids are named', async () => {
  await assert.rejects(
    inferMain(['--model', fixture('gpt2-tiny'), '--out', join(tmp, 'x.safetensors')]),
    (e: Error) => e instanceof ConfigError && /--ids/.test(e.message),
  );
  await assert.rejects(inferMain(['--modle', 'x']), (e: Error) => e instanceof ConfigError && /--modle/.test(e.message));
  const noIds = join(tmp, 'noids.safetensors');
  writeSafetensors(noIds, [{ name: 'tokens', dtype: 'I32', shape: [1, 2], data: new Int32Array([1, 2]) }]);
  await assert.rejects(
    inferMain(['--model', fixture('gpt2-tiny'), '--ids', noIds, '--out', join(tmp, 'y.safetensors'), '--backend', 'cpu']),
    (e: Error) => e instanceof FormatError && e.message.includes(noIds) && e.message.includes('input_ids'),
  );
});
