/**
 * The README's TypeScript blocks run as written, each in a fresh process whose working directory is laid out like
 * a user's checkout: the fixtures at ../shared/fixtures and the bundled data at data/. Each block imports the
 * library by its package name ('logit-distill'), which Node resolves to index.ts because the block's file lies
 * inside the package (a package may import itself by name through its "exports"). The complete CLI run runs too,
 * and prints what the README shows, but for timings.
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

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A user's environment: without the variables by which the test runner tells a child it runs under a test. */
function userEnv(): NodeJS.ProcessEnv {
  const { NODE_TEST_CONTEXT: _testContext, DISTILL_NO_PROGRESS: _noProgress, ...env } = process.env;
  return env;
}

function runProcess(command: string, args: string[], cwd: string): Promise<Ran> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(command, args, { cwd, env: userEnv(), stdio: ['ignore', 'pipe', 'pipe'], timeout: BLOCK_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
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
  const fix = "run `node --import tsx test/docs/readmeBlocks.ts --write` after editing the README's examples";
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
      const r = await runProcess(process.execPath, ['--import', 'tsx', file], box.main);
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

/** The README's complete run: the sh block that starts with `npx distill run`, and the output block right after it. */
function completeRun(markdown: string): { command: string; output: string[] } | null {
  const m = /^```sh\n(npx distill run [\s\S]*?)^```\n\n```\n([\s\S]*?)^```$/m.exec(markdown);
  return m ? { command: m[1].trim(), output: m[2].trimEnd().split('\n') } : null;
}

/** What differs from run to run: throughput, elapsed time and ETA. */
const withoutTimings = (line: string): string =>
  line
    .replace(/[\d,.]+ tok\/s/g, '<n> tok/s')
    .replace(/elapsed [\d:]+/g, 'elapsed <t>')
    .replace(/ETA \S+/g, 'ETA <t>');

test("the README's complete CLI run prints what the README shows (timings aside)", { timeout: BLOCK_TIMEOUT_MS + 10_000 }, async () => {
  const run = completeRun(readFileSync(README, 'utf8'));
  assert.ok(run, 'README.md has no ```sh block starting with `npx distill run` followed by its output block');
  const box = sandbox();
  try {
    // --no-install: npx finds the package's own `distill` bin; it must never fetch a package of that name instead.
    const command = run.command.replace(/^npx distill /, 'npx --no-install distill ');
    const r = await runProcess('bash', ['-c', `${command} 2>&1`], box.main);
    const got = r.stdout.trimEnd().split('\n').map(withoutTimings);
    assert.equal(r.code, 0, `the complete run exited with ${r.code}:\n${r.stdout}`);
    assert.deepEqual(got, run.output.map(withoutTimings), 'the complete run printed other lines than the README shows: update its output block');
  } finally {
    box.remove();
  }
});
