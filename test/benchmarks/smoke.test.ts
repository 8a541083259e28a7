/**
 * Keeps the benchmark harness from rotting: runs `npm run bench`'s entry point end to end on the tiny config,
 * ours alone, two measured steps, into a temporary results folder, and checks the JSON it prints and the files
 * it writes. Spawned as a process (not imported) so the CLI, its flags and its exit code are what is tested.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');

test('bench --config tiny --peer none --steps 2 --json prints positive figures and writes its results', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'));
  try {
    const args = [
      '--import',
      'tsx',
      'benchmarks/run.ts',
      '--config',
      'tiny',
      '--backend',
      'wasm',
      '--peer',
      'none',
      '--steps',
      '2',
      '--warmup',
      '1',
      '--json',
      '--results',
      dir,
    ];
    const started = Date.now();
    const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 110_000 });
    assert.equal(r.status, 0, `bench exited ${r.status}:\n${r.stderr}`);
    assert.ok(Date.now() - started < 60_000, 'the tiny smoke run should take well under a minute');

    const lines = r.stdout.trim().split('\n');
    const out = JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
    assert.equal(out.config, 'tiny');
    assert.equal(out.backend, 'wasm');
    assert.equal(out.devices, 1, 'ours ran in the bench process (the default)');
    assert.equal(out.peer_tokens_per_s, null);
    assert.equal(out.ratio, null);
    assert.ok(typeof out.command === 'string' && out.command.includes('--config tiny'));
    assert.ok((out.ours_tokens_per_s as number) > 0, `ours_tokens_per_s ${out.ours_tokens_per_s}`);

    const machine = out.machine as { cpu: string; cores: number };
    assert.ok(machine.cpu.length > 0 && machine.cores > 0);
    const stages = (out.stages as { ours: Record<string, number> }).ours;
    for (const s of ['read', 'teacherLogits', 'student fwd+bwd', 'optimizer']) {
      assert.ok(stages[s] > 0, `stage ${s}: ${stages[s]} ms`);
    }
    const mem = (out.memory as { ours: Record<string, number> }).ours;
    for (const k of ['peak_rss_bytes', 'peak_tf_bytes', 'peak_tf_tensors']) assert.ok(mem[k] > 0, `memory ${k}: ${mem[k]}`);
    const loss = (out.last_loss as { ours: number }).ours;
    assert.ok(Number.isFinite(loss) && loss >= 0, `forward KL is finite and non-negative, got ${loss}`);

    // The markdown row, the appended record and the regenerated README and chart.
    assert.ok(
      lines.some((l) => l.startsWith('| ') && l.includes('| tiny | wasm |')),
      'a markdown row for tiny',
    );
    const jsonl = readFileSync(join(dir, 'results.jsonl'), 'utf8').trim().split('\n');
    assert.equal(jsonl.length, 1);
    assert.equal((JSON.parse(jsonl[0]) as { config: string }).config, 'tiny');
    assert.match(readFileSync(join(dir, 'README.md'), 'utf8'), /\| tiny \| wasm \|/);
    assert.ok(existsSync(join(dir, 'throughput.svg')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bench --devices 2 runs ours as two data-parallel workers and records devices 2', { timeout: 60_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-dp-'));
  try {
    const args = [
      '--import',
      'tsx',
      'benchmarks/run.ts',
      '--config',
      'tiny',
      '--backend',
      'wasm',
      '--peer',
      'none',
      '--devices',
      '2',
      '--steps',
      '2',
      '--warmup',
      '1',
      '--json',
      '--results',
      dir,
    ];
    const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 55_000 });
    assert.equal(r.status, 0, `bench exited ${r.status}:\n${r.stderr}`);
    const lines = r.stdout.trim().split('\n');
    const out = JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
    assert.equal(out.devices, 2);
    assert.ok((out.ours_tokens_per_s as number) > 0, `ours_tokens_per_s ${out.ours_tokens_per_s}`);
    assert.equal((out.stages as { ours: unknown }).ours, null, 'no per-stage split across processes');
    const loss = (out.last_loss as { ours: number }).ours;
    assert.ok(Number.isFinite(loss) && loss >= 0, `forward KL is finite and non-negative, got ${loss}`);
    // Both ranks' halves of the global batch were trained on: the launcher forked two workers and they reported every token.
    assert.match(r.stderr, /\[worker 1\]/, 'a second worker process ran');
    assert.match(r.stderr, /the ranks reported 128 tokens for the measured steps, the global batch holds 128/);
    assert.ok(
      lines.some((l) => /^\| \S+ \| tiny \| wasm \| 2 \|/.test(l)),
      'the markdown row shows devices 2',
    );
    const rec = JSON.parse(readFileSync(join(dir, 'results.jsonl'), 'utf8').trim()) as { devices: number };
    assert.equal(rec.devices, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
