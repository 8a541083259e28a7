/**
 * The PyTorch peer (benchmarks/peer/kd_step.py) on this machine's CPU torch: its argument errors are one line and
 * exit 2 (benchmarks/peer.ts shows that line as the reason), it builds the very parameters our side counts for a
 * grouped-query shape, and peer.ts turns its result line and its out-of-memory line into an outcome. Skipped where
 * /usr/bin/python3 has no torch (apt-get install -y python3-torch libopenblas0-pthread).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { paramCount, type BenchShape } from '../../benchmarks/configs.ts';
import { DEFAULT_PYTHON, PEER_SCRIPT, parsePeerOom, runPeer, type PeerOptions } from '../../benchmarks/peer.ts';

const probe = spawnSync(DEFAULT_PYTHON, ['-c', 'import torch; print(torch.__version__, hasattr(torch, "compile"), torch.cuda.is_available())'], {
  encoding: 'utf8',
});
const [torchVersion, hasCompile, hasCuda] = probe.status === 0 ? probe.stdout.trim().split(' ') : [null, 'False', 'False'];
const noTorch = torchVersion === null ? `no torch in ${DEFAULT_PYTHON}` : false;

/** A small shape with grouped-query attention on both sides, an explicit SwiGLU width, a tied teacher and another RoPE base. */
const GQA: BenchShape = {
  vocab: 96,
  seq: 8,
  batch: 2,
  student: { hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 40, ropeTheta: 1e6 },
  teacher: { hidden: 48, layers: 1, heads: 6, kvHeads: 1, tied: true },
  steps: 1,
  warmup: 0,
};

function peer(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(DEFAULT_PYTHON, [PEER_SCRIPT, '--threads', '1', ...args], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, OMP_NUM_THREADS: '1' },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test(
  '--compile on a torch without torch.compile exits 2 and says which torch it found',
  { skip: noTorch || (hasCompile === 'True' && 'this torch has torch.compile') },
  () => {
    const r = peer(['--config', 'tiny', '--compile']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`--compile needs torch.compile \\(torch >= 2.0\\); this is torch ${torchVersion!.replace(/[.+]/g, '\\$&')}`));
    assert.equal(r.stdout, '', 'no result line');
  },
);

test('--compile without a warm-up step exits 2: the measured steps would include the compilation', { skip: noTorch }, () => {
  const r = peer(['--config', 'tiny', '--compile', '--warmup', '0']);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--compile needs at least one warm-up step/);
});

test('--device cuda where torch sees no GPU exits 2 with the reason, not a traceback', { skip: noTorch || (hasCuda === 'True' && 'a GPU is visible') }, () => {
  const r = peer(['--config', 'tiny', '--device', 'cuda']);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--device cuda: torch \S+ sees no CUDA device/);
  assert.doesNotMatch(r.stderr, /Traceback/);
});

test('a shape whose kv heads do not divide its heads exits 2 naming the side', { skip: noTorch }, () => {
  const bad = { ...GQA, teacher: { hidden: 48, layers: 1, heads: 6, kvHeads: 4 } };
  const r = peer(['--spec', JSON.stringify(bad)]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /teacher kvHeads 4 must divide heads 6/);
});

test('given the shape unresolved, the peer applies the defaults of configs.ts: it builds the parameters our side counts', { skip: noTorch }, () => {
  const r = peer(['--spec', JSON.stringify(GQA)]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  assert.equal(out.student_params, paramCount(GQA, 'student'));
  assert.equal(out.teacher_params, paramCount(GQA, 'teacher'));
  assert.ok(Number.isFinite(out.last_loss) && (out.last_loss as number) >= 0, `forward KL ${out.last_loss}`);
  assert.equal(out.compiled, false);
  assert.equal(out.peak_device_bytes, null, 'no device peak on cpu');
});

const options = (python: string): PeerOptions => ({ python, threads: 1, steps: 1, warmup: 0, configName: 'gqa', timeoutMs: 60_000 });

test('runPeer reads the result line: figures, eager mode, parameter counts, no device peak on cpu', { skip: noTorch }, async () => {
  const outcome = await runPeer(GQA, options(DEFAULT_PYTHON));
  assert.ok(outcome.ok, outcome.ok ? '' : outcome.reason);
  const p = outcome.result;
  assert.ok(p.tokensPerS > 0);
  assert.deepEqual(p.params, { student: paramCount(GQA, 'student'), teacher: paramCount(GQA, 'teacher') });
  assert.deepEqual([p.mode.compiled, p.mode.device, p.mode.precision, p.mode.optimizer, p.mode.compile_s], [false, 'cpu', 'fp32', 'AdamW', null]);
  assert.equal(p.peakDeviceBytes, null);
});

test("runPeer turns the peer's out-of-memory line into an outcome that says so, with where and how much", async () => {
  const line = JSON.stringify({
    oom: true,
    where: 'step 1 (warm-up)',
    peak_device_bytes: 130 * 2 ** 30,
    device_total_bytes: 140 * 2 ** 30,
    error: 'CUDA out of memory. Tried to allocate 4.64 GiB.',
    compiled: true,
  });
  const dir = mkdtempSync(join(tmpdir(), 'peer-oom-'));
  try {
    // A stand-in interpreter that prints what kd_step.py prints when torch runs out of device memory, and exits 3.
    const fake = join(dir, 'python');
    writeFileSync(fake, `#!/bin/sh\necho 'step 1/3 (warm-up)' >&2\necho '${line}'\nexit 3\n`);
    chmodSync(fake, 0o755);
    const outcome = await runPeer(GQA, options(fake));
    assert.equal(outcome.ok, false);
    if (outcome.ok) return;
    assert.deepEqual(outcome.oom, {
      where: 'step 1 (warm-up)',
      peak_device_bytes: 130 * 2 ** 30,
      device_total_bytes: 140 * 2 ** 30,
      error: 'CUDA out of memory. Tried to allocate 4.64 GiB.',
      compiled: true,
    });
    assert.equal(
      outcome.reason,
      'the peer ran out of device memory in step 1 (warm-up) (peak 130.0 GiB of 140.0 GiB): CUDA out of memory. Tried to allocate 4.64 GiB.',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(parsePeerOom('{"tokens_per_s": 1}'), null, 'a result line is no OOM');
  assert.equal(parsePeerOom('not json'), null);
});
