/**
 * What the results pages say about the peer's mode and memory: a compiled peer is its own current row beside the
 * eager one, a peer that ran out of device memory is shown as such (not as "unavailable"), and device peaks are
 * shown where measured, RSS elsewhere.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readResults, type BenchRecord } from '../../benchmarks/results.ts';
import { RESULTS_DIR, currentFiguresTable, latestPerConfig, renderResultsReadme } from '../../benchmarks/results/render.ts';
import { markdownRow, peakMemory } from '../../benchmarks/table.ts';

const GiB = 2 ** 30;
const base = readResults(RESULTS_DIR).find((r) => r.kind === 'config' && r.backend === 'cuda' && /bf16-mixed/.test(r.backend_detail));

function record(patch: Partial<BenchRecord>): BenchRecord {
  assert.ok(base, 'results.jsonl has a cuda bf16-mixed run');
  return { ...base, ...patch };
}

const eager = (): BenchRecord =>
  record({
    date: '2027-01-01T00:00:00.000Z',
    peer_tokens_per_s: 100_000,
    peer_mode: { compiled: false, device: 'cuda NVIDIA H200', precision: 'bf16', optimizer: 'AdamW', compile_s: null },
    memory: {
      ours: { peak_rss_bytes: 1e9, peak_tf_bytes: 3e9, peak_tf_tensors: 300, peak_device_bytes: 12 * GiB },
      peer: { peak_rss_bytes: 2e9, peak_device_bytes: 9 * GiB },
    },
    command: 'npm run bench -- --config M --backend cuda --precision bf16-mixed --json --python python3 --peer_args "--device cuda --precision bf16"',
  });

const compiled = (): BenchRecord =>
  record({
    date: '2027-01-02T00:00:00.000Z',
    peer_tokens_per_s: 187_769,
    peer_mode: { compiled: true, device: 'cuda NVIDIA H200', precision: 'bf16', optimizer: 'AdamW fused', compile_s: 41 },
    command: 'npm run bench -- --config M --backend cuda --precision bf16-mixed --json --python python3 --peer_args "--device cuda --precision bf16 --compile"',
  });

test('an eager and a compiled peer of one configuration are two current rows, the compiled one marked', () => {
  const rows = latestPerConfig([eager(), compiled()]);
  assert.equal(rows.length, 2);
  const table = currentFiguresTable([eager(), compiled()]).join('\n');
  assert.match(table, /\| 100,000 \(CUDA, bf16\) \|/);
  assert.match(table, /\| 187,769 \(CUDA, bf16, compiled\) \|/);
});

test('recomputation and the GPU make rows of their own; the precision reads without the detail that follows it', () => {
  const detail = (gpu: string, extra = ''): string => `${gpu}, compute capability 9.0, 79 GiB; precision bf16-mixed${extra}`;
  const h200 = eager();
  const h100 = record({ ...eager(), backend_detail: detail('NVIDIA H100 80GB HBM3') });
  const recomputed = record({ ...eager(), backend_detail: detail('NVIDIA H200', '; recompute selective') });
  assert.equal(latestPerConfig([h200, h100, recomputed]).length, 3);
  const table = currentFiguresTable([recomputed]).join('\n');
  assert.match(table, /\| cuda, bf16-mixed, recompute selective \| 1 \| NVIDIA H200;/);
});

test('a peer out of device memory reads as such in the current row, the run row and the memory section', () => {
  const oom = record({
    config: 'qwen2.5-0.5B-from-1.5B',
    peer_tokens_per_s: null,
    ratio: null,
    peer_unavailable: 'the peer ran out of device memory in step 1 (warm-up)',
    peer_mode: null,
    peer_oom: { where: 'step 1 (warm-up)', peak_device_bytes: 131.5 * GiB, device_total_bytes: 139.8 * GiB, error: 'CUDA out of memory.', compiled: false },
    memory: { ours: { peak_rss_bytes: 1e9, peak_tf_bytes: 3e9, peak_tf_tensors: 300, peak_device_bytes: 120 * GiB }, peer: null },
    command:
      'npm run bench -- --config qwen2.5-0.5B-from-1.5B --backend cuda --precision bf16-mixed --json --python python3 --peer_args "--device cuda --precision bf16"',
  });
  assert.match(currentFiguresTable([oom]).join('\n'), /\| out of memory \(CUDA, bf16\) \|/);
  assert.match(markdownRow(oom), /\| out of memory \|/);
  assert.equal(peakMemory(oom), '122,880 / 134,656 (OOM) device');
  const page = renderResultsReadme([oom]);
  assert.match(page, /## Peak device memory/);
  assert.match(page, /\| qwen2\.5-0\.5B-from-1\.5B \| cuda, bf16-mixed \| 120\.0 \| out of memory in step 1 \(warm-up\) \(131\.5 held, of 139\.8\) \|/);
});

test('memory shows device peaks where either side measured one, RSS elsewhere', () => {
  assert.equal(peakMemory(eager()), '12,288 / 9,216 device');
  const cpu = record({ memory: { ours: { peak_rss_bytes: 1536 * 2 ** 20, peak_tf_bytes: 1, peak_tf_tensors: 1 }, peer: { peak_rss_bytes: 1024 * 2 ** 20 } } });
  assert.equal(peakMemory(cpu), '1,536 / 1,024 RSS');
});
