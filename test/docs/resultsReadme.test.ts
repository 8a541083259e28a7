/**
 * The benchmark pages never disagree with the measurements: benchmarks/results/README.md is exactly the render of
 * results.jsonl, and the project's README shows the current row of every configuration.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readResults, type BenchRecord } from '../../benchmarks/results.ts';
import { RESULTS_DIR, currentFiguresTable, displayCommand, latestPerConfig, renderResultsReadme } from '../../benchmarks/results/render.ts';
import { ROOT } from '../helpers/fixtures.ts';

const records = readResults(RESULTS_DIR);
const RENDER = 'node --import tsx benchmarks/results/render.ts';

test('benchmarks/results/README.md is the render of results.jsonl', () => {
  assert.ok(records.length > 0, `no records in ${join(RESULTS_DIR, 'results.jsonl')}`);
  const checkedIn = readFileSync(join(RESULTS_DIR, 'README.md'), 'utf8');
  assert.equal(checkedIn, renderResultsReadme(records), `benchmarks/results/README.md differs from its render: run \`${RENDER}\``);
});

test("the README's benchmark table is the newest row of each configuration in results.jsonl", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const table = currentFiguresTable(records).join('\n');
  assert.ok(readme.includes(table), `README.md's benchmark table is not the current one; paste the output of \`${RENDER} --current\`:\n${table}`);
});

test('the current figures take the newest record of each configuration, told apart by backend, processes and precision', () => {
  const base = records.find((r) => r.kind === 'config' && r.backend === 'webgpu' && r.config === 'M');
  assert.ok(base, 'results.jsonl has an M run on webgpu');
  const at = (date: string, tokensPerS: number, detail: string): BenchRecord => ({ ...base, date, ours_tokens_per_s: tokensPerS, backend_detail: detail });
  const rows = latestPerConfig([at('2026-01-01', 1, 'gpu'), at('2026-01-02', 2, 'gpu; precision bf16-mixed'), at('2026-01-03', 3, 'gpu')]);
  assert.deepEqual(rows.map((r) => r.ours_tokens_per_s).sort(), [2, 3]);
});

test("commands are shown as typed: the peer arguments quoted again, the device machine's results folder dropped", () => {
  assert.equal(
    displayCommand(
      'npm run bench -- --config M --backend webgpu --json --python python3 --peer_args --device cuda --precision bf16 --results /root/out/results',
    ),
    'npm run bench -- --config M --backend webgpu --json --python python3 --peer_args "--device cuda --precision bf16"',
  );
  assert.equal(displayCommand('npm run bench -- --config S --devices 2 --json'), 'npm run bench -- --config S --devices 2 --json');
  assert.equal(displayCommand('npm run bench -- --config S --peer_args "--device cuda"'), 'npm run bench -- --config S --peer_args "--device cuda"');
});
