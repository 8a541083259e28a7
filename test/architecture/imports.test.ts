/**
 * Issue 22, item 3: the import graph has no circle and no upward import, under the rules of docs/architecture.md.
 * The graph is read statically from the import statements of every .ts file under src/, operators/ and pipelines/
 * (and index.ts), so a violation fails here before it confuses a reader.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cycles, importGraph, specifiers, type ImportEdge } from './importGraph.ts';
import { ROOT } from '../helpers/fixtures.ts';

const { files, edges } = importGraph(ROOT);

/** The layers, lowest first; a file may import its own layer and those below (docs/architecture.md). */
function layerOf(file: string): { rank: number; name: string } {
  if (file.startsWith('src/cli/')) return { rank: 3, name: 'the CLI (src/cli/)' };
  if (file === 'index.ts') return { rank: 3, name: 'the package entry (index.ts)' };
  if (file.startsWith('pipelines/')) return { rank: 2, name: 'pipelines/' };
  if (file.startsWith('operators/')) return { rank: 1, name: 'operators/' };
  return { rank: 0, name: 'the engine (src/)' };
}

/** Training maths that the process plumbing (src/runtime/) never needs. */
const TRAINING_MATHS = /^src\/(model|losses|ops|optim)\//;

/**
 * Circles known and accepted for now, each listed so that any new circle fails, and checked to still exist so that
 * the list shrinks when one is fixed. None is left.
 */
const KNOWN_CIRCLES: string[] = [];

const show = (es: ImportEdge[]): string => es.map((e) => `${e.from} → ${e.to}`).join('\n');

test('the graph is read: every file under src/, operators/ and pipelines/ is in it, with its imports', () => {
  assert.ok(files.length > 150, `${files.length} files`);
  assert.ok(
    edges.some((e) => e.from === 'pipelines/distill.ts' && e.to === 'operators/backward.ts'),
    'distill.ts imports backward',
  );
  // Statements that span lines, re-exports, type-only and dynamic imports count; comments do not.
  assert.deepEqual(
    specifiers(
      "import {\n  a,\n  b,\n} from './x.ts';\nexport { c } from './y.ts';\nimport type { D } from './z.ts';\nconst m = await import('./w.ts');\n// import { e } from './no.ts';\n/** import { f } from './no2.ts'; */",
    ),
    ['./x.ts', './y.ts', './z.ts', './w.ts'],
  );
});

test('no upward import: the engine (src/) never imports operators/ or pipelines/, operators/ never pipelines/; the CLI sits on top', () => {
  const up = edges.filter((e) => layerOf(e.to).rank > layerOf(e.from).rank);
  assert.equal(up.length, 0, `upward imports:\n${up.map((e) => `${e.from} (${layerOf(e.from).name}) → ${e.to} (${layerOf(e.to).name})`).join('\n')}`);
});

test('the process plumbing (src/runtime/) imports no training maths', () => {
  const bad = edges.filter((e) => e.from.startsWith('src/runtime/') && TRAINING_MATHS.test(e.to));
  assert.equal(bad.length, 0, show(bad));
});

test('no import circle (type-only imports count) beyond the known ones (none now)', () => {
  const found = cycles(files, edges).map((c) => c.join(' '));
  const fresh = found.filter((c) => !KNOWN_CIRCLES.includes(c));
  assert.deepEqual(fresh, [], `import circles:\n${fresh.join('\n')}`);
  const gone = KNOWN_CIRCLES.filter((c) => !found.includes(c));
  assert.deepEqual(gone, [], 'a known circle is gone: remove it from KNOWN_CIRCLES');
});

test('every import resolves to a file of the graph (a moved file leaves no dangling path)', () => {
  const known = new Set(files);
  const dangling = edges.filter((e) => /^(src|operators|pipelines)\//.test(e.to) && !known.has(e.to));
  assert.equal(dangling.length, 0, show(dangling));
});
