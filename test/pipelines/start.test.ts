/**
 * `npm start` cannot rot: the bundled teacher, student config and Brown data are in the repository, and the main
 * job runs end to end (here for 3 steps) and prints the KD-vs-CE comparison with a report.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';

test('npm start runs the main job on the bundled data and prints the comparison', () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-start-'));
  try {
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'start', '--max_steps', '3', '--val_batches', '1', '--log_dir', dir, '--backend', 'wasm'],
      {
        encoding: 'utf8',
        cwd: ROOT,
        env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
      },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Validation on \d+ held-out tokens of the Brown corpus/);
    assert.match(r.stdout, /teacher \(bundled\)\s+\d+\.\d{4}/);
    assert.match(r.stdout, /distilled student \(KD\)\s+\d+\.\d{4}/);
    assert.match(r.stdout, /same student, plain CE\s+\d+\.\d{4}/);
    assert.match(r.stdout, /Distillation (wins|did not win)/);
    assert.ok(existsSync(join(dir, 'report.html')));
    assert.ok(existsSync(join(dir, 'kd', 'student', 'model.safetensors')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
