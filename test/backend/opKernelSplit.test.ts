/**
 * The op/kernel split, read from the sources: model, loss, optimizer and op code never import a backend (they call
 * ops, and an op runs whichever kernel the current backend registers), and an op imports nothing but tfjs, the
 * project's errors and other ops, so that a backend can import the ops' kernel names and contracts without a circle.
 * Each backend registers its kernels under those names; the test also checks that webgpu's registration names only
 * kernels some op runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { registerCudaKernels } from '../../src/backend/cuda/kernels/register.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith('.ts')) out.push(path);
  }
  return out;
}

/** Every module specifier a file imports or re-exports, statically or through import(). */
function importedSpecifiers(code: string): string[] {
  const found: string[] = [];
  const patterns = [/\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*['"]([^'"]+)['"]/g, /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g];
  for (const p of patterns) for (const m of code.matchAll(p)) found.push(m[1]);
  return found;
}

/** The specifier as a path from the project root (relative imports resolved), or the package name. */
function target(file: string, specifier: string): string {
  return specifier.startsWith('.') ? relative(root, resolve(dirname(file), specifier)) : specifier;
}

function importsOf(folder: string): { file: string; to: string }[] {
  return sourceFiles(join(root, folder)).flatMap((file) =>
    importedSpecifiers(readFileSync(file, 'utf8')).map((s) => ({ file: relative(root, file), to: target(file, s) })),
  );
}

test('the import scanner sees static, side-effect, re-export and dynamic imports', () => {
  const code = `import * as tf from '@tensorflow/tfjs-core';\nimport '../backend/a.ts';\nexport { b } from "./b.ts";\nconst c = await import('../c.ts');\nimport {\n  d,\n} from '../d.ts';`;
  assert.deepEqual(importedSpecifiers(code).sort(), ['../backend/a.ts', '../c.ts', '../d.ts', './b.ts', '@tensorflow/tfjs-core'].sort());
});

test('model, loss, optimizer and op code import no backend', () => {
  const folders = ['src/model', 'src/losses', 'src/optim', 'src/ops'];
  const imports = folders.flatMap(importsOf);
  assert.ok(imports.length > 50, `the scan found only ${imports.length} imports: are the folders still there?`);
  const leaks = imports.filter(({ to }) => to.startsWith('src/backend/') || to === 'src/backend');
  assert.deepEqual(leaks, [], "call an op in src/ops instead; the backend registers its kernel under the op's name");
});

test('ops import only tfjs, the project errors and other ops', () => {
  const allowed = (to: string): boolean => to.startsWith('@tensorflow/') || to === 'src/errors.ts' || to.startsWith('src/ops/');
  const imports = importsOf('src/ops');
  assert.ok(imports.length > 0);
  assert.deepEqual(
    imports.filter(({ to }) => !allowed(to)),
    [],
  );
});

test('webgpu registers its fused kernels under names the ops run', async () => {
  const ops = sourceFiles(join(root, 'src/ops'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
  const opNames = new Set([...ops.matchAll(/export const \w+_KERNEL = '(\w+)';/g)].map((m) => m[1]));
  assert.ok(opNames.size >= 12, `kernel names found in src/ops: ${[...opNames]}`);
  const registration = readFileSync(join(root, 'src/backend/webgpu/kernels.ts'), 'utf8');
  const registered = [...registration.matchAll(/registerWebgpuKernel\((\w+_KERNEL),/g)].map((m) => m[1]);
  const constants = new Set([...ops.matchAll(/export const (\w+_KERNEL) = '/g)].map((m) => m[1]));
  assert.deepEqual(
    registered.filter((c) => !constants.has(c)),
    [],
    'webgpu registers a kernel no op defines',
  );
  // AdamW on webgpu updates all parameters as one flat vector (src/optim/adamw.ts), not through the per-parameter op;
  // the global norm there is the composition (webgpu's host cost per op is not what bounds it).
  const notOnWebgpu = ['ADAMW_UPDATE_KERNEL', 'GLOBAL_NORM_KERNEL'];
  assert.deepEqual(
    [...constants].filter((c) => !registered.includes(c) && !notOnWebgpu.includes(c)),
    [],
    'webgpu registers every op kernel',
  );
});

test('cuda registers a kernel under every name the ops run', () => {
  registerCudaKernels();
  const ops = sourceFiles(join(root, 'src/ops'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
  const opNames = [...ops.matchAll(/export const \w+_KERNEL = '(\w+)';/g)].map((m) => m[1]);
  assert.ok(opNames.length >= 13);
  assert.deepEqual(
    opNames.filter((n) => !tf.getKernel(n, 'cuda')),
    [],
    'op kernels with no cuda kernel',
  );
});
