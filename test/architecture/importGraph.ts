/**
 * The project's import graph, read statically: every import and re-export statement (and `import('...')` with a
 * literal path) of the TypeScript files under src/, operators/ and pipelines/, plus index.ts. Used by the
 * architecture test; the rules it checks are written in docs/architecture.md.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

export interface ImportEdge {
  from: string;
  to: string;
}

const ROOTS = ['src', 'operators', 'pipelines'];

function tsFiles(root: string, dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(root, dir))) {
    const rel = join(dir, name);
    if (statSync(join(root, rel)).isDirectory()) out.push(...tsFiles(root, rel));
    else if (name.endsWith('.ts')) out.push(rel);
  }
  return out;
}

/** Comments removed (JSDoc examples hold import statements that are not imports). */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`\\])\/\/.*$/gm, '$1');
}

/** The module specifiers a file imports, statically or with a literal dynamic import. */
export function specifiers(text: string): string[] {
  const c = code(text);
  const out: string[] = [];
  for (const re of [/\b(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*['"]([^'"]+)['"]/g, /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g]) {
    for (const m of c.matchAll(re)) out.push(m[1]);
  }
  return out;
}

/** Edges between project files (repository-relative paths); packages and node: modules are left out. */
export function importGraph(root: string): { files: string[]; edges: ImportEdge[] } {
  const files = [...ROOTS.flatMap((r) => tsFiles(root, r)), 'index.ts'].map((f) => f.split('\\').join('/'));
  const edges: ImportEdge[] = [];
  for (const from of files) {
    for (const s of specifiers(readFileSync(join(root, from), 'utf8'))) {
      if (!s.startsWith('.')) continue;
      const to = relative(root, normalize(join(root, dirname(from), s)))
        .split('\\')
        .join('/');
      edges.push({ from, to });
    }
  }
  return { files, edges };
}

/** The import cycles: strongly connected components of more than one file (or a file importing itself). */
export function cycles(files: string[], edges: ImportEdge[]): string[][] {
  const next = new Map<string, string[]>(files.map((f) => [f, []]));
  for (const e of edges) next.get(e.from)?.push(e.to);
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of next.get(v) ?? []) {
      if (!next.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (next.get(v) ?? []).includes(v)) found.push(scc.sort());
    }
  };
  for (const f of files) if (!idx.has(f)) visit(f);
  return found;
}
