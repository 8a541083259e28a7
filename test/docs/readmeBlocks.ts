/**
 * The README's TypeScript examples, as a test reads them and as `npm run typecheck` checks them. Running a block
 * (test/docs/readme.test.ts) catches what crashes; typechecking catches what only happens to run, since tsx strips
 * types. tsc reads files, not markdown, so each block has a copy in test/docs/readmeExamples/, which the test
 * requires to equal the README. After editing the README's examples:
 *
 *   node --import tsx test/docs/readmeBlocks.ts --write
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROOT } from '../helpers/fixtures.ts';

export const README = join(ROOT, 'README.md');
export const EXAMPLES_DIR = join(ROOT, 'test/docs/readmeExamples');

/** The body of every ```ts fenced block, in order. */
export function readmeTsBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

export const exampleFileName = (i: number): string => `example-${i + 1}.check.ts`;

/** The typechecked copy of block i: a header naming its source, then the block exactly. */
export function exampleFile(i: number, block: string): string {
  return `// README.md's TypeScript block ${i + 1}, copied by test/docs/readmeBlocks.ts --write for \`npm run typecheck\`; do not edit here.\n${block}`;
}

/** Rewrites test/docs/readmeExamples/ from the README. */
export function writeExampleFiles(): string[] {
  rmSync(EXAMPLES_DIR, { recursive: true, force: true });
  mkdirSync(EXAMPLES_DIR, { recursive: true });
  return readmeTsBlocks(readFileSync(README, 'utf8')).map((b, i) => {
    const path = join(EXAMPLES_DIR, exampleFileName(i));
    writeFileSync(path, exampleFile(i, b));
    return path;
  });
}

export const exampleFilesPresent = (): string[] =>
  readdirSync(EXAMPLES_DIR)
    .filter((f) => f.endsWith('.ts'))
    .sort();

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--write')) {
  process.stdout.write(
    `wrote ${writeExampleFiles()
      .map((p) => p.replace(ROOT + '/', ''))
      .join(', ')}\n`,
  );
}
