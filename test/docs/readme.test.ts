/**
 * The README's TypeScript blocks run as written, each in a fresh process whose working directory is laid out like
 * a user's checkout: the fixtures at ../shared/fixtures and the bundled data at data/. Each block imports the
 * library by its package name ('logit-distill'), which Node resolves to index.ts because the block's file lies
 * inside the package (a package may import itself by name through its "exports").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, ROOT } from '../helpers/fixtures.ts';
import { EXAMPLES_DIR, README, exampleFile, exampleFileName, exampleFilesPresent, readmeTsBlocks } from './readmeBlocks.ts';

const blocks = readmeTsBlocks(readFileSync(README, 'utf8'));
/** A README block is an example, run on the fixtures' tiny models: seconds, not minutes. */
const BLOCK_TIMEOUT_MS = 120_000;

interface Ran { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function runTs(file: string, cwd: string): Promise<Ran> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: BLOCK_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code, signal) => resolveRun({ code, signal, stdout, stderr }));
  });
}

/**
 * <ROOT>/runs/readme-XXXX/{main, shared/fixtures}: the block runs in main/, so '../shared/fixtures' and 'data/' mean
 * what they mean in the README, and whatever it writes (runs/...) stays in the sandbox. runs/ is git-ignored and
 * inside the package, which the import by package name needs.
 */
function sandbox(): { main: string; remove: () => void } {
  mkdirSync(join(ROOT, 'runs'), { recursive: true });
  const base = mkdtempSync(join(ROOT, 'runs', 'readme-'));
  const main = join(base, 'main');
  mkdirSync(main);
  mkdirSync(join(base, 'shared'));
  symlinkSync(FIXTURES, join(base, 'shared', 'fixtures'));
  symlinkSync(join(ROOT, 'data'), join(main, 'data'));
  return { main, remove: () => rmSync(base, { recursive: true, force: true }) };
}

test('the README has TypeScript examples, and each is typechecked: test/docs/readmeExamples/ holds exactly their copies', () => {
  assert.ok(blocks.length >= 2, `README.md has ${blocks.length} \`\`\`ts blocks; expected the pipeline and the recipe examples`);
  const fix = 'run `node --import tsx test/docs/readmeBlocks.ts --write` after editing the README\'s examples';
  assert.deepEqual(exampleFilesPresent(), blocks.map((_, i) => exampleFileName(i)).sort(), `${EXAMPLES_DIR} does not match the README's blocks: ${fix}`);
  blocks.forEach((b, i) => {
    const copy = readFileSync(join(EXAMPLES_DIR, exampleFileName(i)), 'utf8');
    assert.equal(copy, exampleFile(i, b), `${exampleFileName(i)} differs from README block ${i + 1}: ${fix}`);
  });
});

for (const [i, block] of blocks.entries()) {
  const firstCode = block.split('\n').find((l) => /^(await|const|let)\b/.test(l)) ?? '';
  test(`README block ${i + 1} runs as written (${firstCode.trim().slice(0, 60)})`, { timeout: BLOCK_TIMEOUT_MS + 10_000 }, async () => {
    assert.ok(existsSync(FIXTURES), `the fixtures are not at ${FIXTURES}`);
    const box = sandbox();
    try {
      const file = join(box.main, `readme-block-${i + 1}.ts`);
      writeFileSync(file, block);
      const r = await runTs(file, box.main);
      const output = `--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
      assert.equal(r.signal, null, `README block ${i + 1} was killed (${r.signal}; limit ${BLOCK_TIMEOUT_MS / 1000} s)\n${output}`);
      assert.equal(r.code, 0, `README block ${i + 1} exited with ${r.code}\n${output}`);
      // A block that prints (the pipeline's tap, the recipe's result) must print, and print no NaN, and nothing
      // undefined (a field the example names that no longer exists).
      if (block.includes('console.log')) assert.ok(r.stdout.trim().length > 0, `README block ${i + 1} printed nothing\n${output}`);
      assert.doesNotMatch(r.stdout, /\bNaN\b|\bInfinity\b|\bundefined\b/, `README block ${i + 1} printed a non-finite or undefined value\n${output}`);
    } finally {
      box.remove();
    }
  });
}
