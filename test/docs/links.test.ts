/**
 * The README sends readers to docs/ for everything it leaves out, so a link that leads nowhere loses a fact.
 * Every relative link in the user-facing pages must name a file that exists and, with #anchor, a heading in it
 * (anchors as GitHub makes them from headings); and every file of the repository that the pages name in code
 * (`src/losses/chunkCache.ts`, `node --import tsx benchmarks/cache/run.ts`) must still be there after a move.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';

const pages = [
  join(ROOT, 'README.md'),
  join(ROOT, 'benchmarks/results/README.md'),
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => join(ROOT, 'docs', f)),
];

/** GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens. */
function headingAnchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchorsOf(markdown: string): Set<string> {
  const outsideCode = markdown.replace(/^```[\s\S]*?^```$/gm, '');
  return new Set([...outsideCode.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => headingAnchor(m[1])));
}

/** [text](target) links outside code blocks and inline code, except absolute URLs. */
function relativeLinks(markdown: string): string[] {
  const prose = markdown.replace(/^```[\s\S]*?^```$/gm, '').replace(/`[^`\n]*`/g, '');
  return [...prose.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]).filter((t) => !/^[a-z]+:/i.test(t));
}

/** Paths of this repository named inside `code` (commands included); globs and placeholders are not paths. */
function repositoryPaths(markdown: string): string[] {
  const spans = [...markdown.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]);
  return spans
    .flatMap((s) => s.split(/\s+/))
    .filter((w) => /^(src|operators|pipelines|test|benchmarks|scripts|bin|examples|data|docs)\/[\w./-]*$/.test(w))
    .map((w) => w.replace(/[/.,]+$/, ''));
}

test('GitHub anchors are made from headings as GitHub makes them', () => {
  assert.equal(headingAnchor('Mixed precision: `--precision bf16-mixed`'), 'mixed-precision---precision-bf16-mixed');
  assert.equal(headingAnchor('Two H200s in one host (webgpu)'), 'two-h200s-in-one-host-webgpu');
});

for (const page of pages) {
  const name = relative(ROOT, page);
  test(`every relative link in ${name} leads somewhere`, () => {
    const markdown = readFileSync(page, 'utf8');
    const links = relativeLinks(markdown);
    const broken: string[] = [];
    for (const link of links) {
      const [path, anchor] = link.split('#');
      const target = path ? join(dirname(page), decodeURIComponent(path)) : page;
      if (!existsSync(target)) {
        broken.push(`${link}: no file ${relative(ROOT, target)}`);
        continue;
      }
      if (anchor && target.endsWith('.md') && statSync(target).isFile() && !anchorsOf(readFileSync(target, 'utf8')).has(anchor)) {
        broken.push(`${link}: no heading with anchor #${anchor} in ${relative(ROOT, target)}`);
      }
    }
    assert.deepEqual(broken, [], `${name} has links that lead nowhere`);
  });

  test(`every repository file that ${name} names exists`, () => {
    const missing = repositoryPaths(readFileSync(page, 'utf8')).filter((p) => !existsSync(join(ROOT, p)));
    assert.deepEqual(missing, [], `${name} names files that are not in the repository (moved or renamed?)`);
  });
}
