/**
 * What a user sees when the backend is chosen (issue 23 items 3 and 4), through real processes: `auto` on a machine
 * without a GPU says in one line per backend why it skipped it, and nothing from Dawn's or the Vulkan loader's
 * start-up reaches the terminal; an uncaught error in a user's script after wasm started prints that error, not
 * tfjs-wasm's emscripten glue; `--backend cuda` without a driver stops with one line naming libcuda.so.1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';

const gpuHere = existsSync('/dev/nvidia0') || existsSync('/dev/dri');
const select = join(ROOT, 'src/backend/select.ts');

function script(body: string): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import { selectBackend } from ${JSON.stringify(select)};\n${body}`], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

test('auto on a machine without a GPU: one line per skipped backend, and no Dawn or Vulkan output', { skip: gpuHere && 'a GPU is here' }, () => {
  const r = script(`await selectBackend('auto');`);
  const lines = (r.stdout + r.stderr).trim().split('\n');
  assert.equal(r.status, 0, r.stderr);
  assert.match(lines[0], /^backend: wasm \(/);
  for (const b of ['tensorflow', 'cuda', 'webgpu'])
    assert.ok(
      lines.some((l) => l.startsWith(`  skipped ${b}: `)),
      `no line for ${b}:\n${lines.join('\n')}`,
    );
  assert.equal(lines.length, 4, `only the choice and the three skipped backends:\n${lines.join('\n')}`);
  assert.ok(!/Warning|BackendVk|vk[A-Z]/.test(r.stdout + r.stderr));
});

test('an uncaught error after wasm started prints the error itself, not the wasm glue', () => {
  const r = script(`await selectBackend('wasm', { log: null });\nsetTimeout(() => { throw new Error('the user script broke here'); }, 0);`);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /the user script broke here/);
  assert.ok(r.stderr.length < 3000, `${r.stderr.length} bytes of stderr`);
});

test('--backend cuda without a driver: one line naming libcuda.so.1 and what to install', { skip: gpuHere && 'a GPU is here' }, () => {
  const r = script(`try { await selectBackend('cuda'); } catch (e) { console.error(e.message); process.exit(2); }`);
  assert.equal(r.status, 2);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /libcuda\.so\.1 \(the CUDA driver\) is missing.*install the NVIDIA driver/);
});
