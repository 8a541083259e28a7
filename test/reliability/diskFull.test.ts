/**
 * Disk full while a checkpoint is written: the run stops with an error that says the previous checkpoint is
 * intact, that checkpoint loads whole, no step-* directory of the failed write appears, and the same run resumes
 * from it to the same student as an uninterrupted run.
 *
 * Two ways to fill the disk: a test-only seam (fs.writeSync on files under checkpoints/ fails with ENOSPC once
 * armed, patched in this test process through syncBuiltinESMExports; production code is untouched), which works
 * everywhere; and, when this test runs as root where mounts are allowed, a real 1.3 MB tmpfs under checkpoints/.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs, { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { StageError } from '../../src/errors.ts';
import { maxDiffStudents, scanCheckpoints, trainArgs } from './killHarness.ts';
import { ROOT } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

function recipe(dir: string, name: string): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    trainer: { maxSteps: 5, globalBatchSize: 2, microBatchSize: 1, saveInterval: 1, valCheckInterval: 0, logInterval: 1 },
  });
}

/** Arms ENOSPC on every write to a file opened under a path containing `marker`; returns the disarm function. */
function failWritesUnder(marker: string): { arm: () => void; restore: () => void } {
  const { openSync, writeSync } = fs;
  const watched = new Set<number>();
  let armed = false;
  fs.openSync = ((path: fs.PathLike, ...rest: unknown[]) => {
    const fd = (openSync as (...a: unknown[]) => number)(path, ...rest);
    if (String(path).includes(marker)) watched.add(fd);
    else watched.delete(fd);
    return fd;
  }) as typeof fs.openSync;
  fs.writeSync = ((fd: number, ...rest: unknown[]) => {
    if (armed && watched.has(fd)) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    return (writeSync as (...a: unknown[]) => number)(fd, ...rest);
  }) as typeof fs.writeSync;
  syncBuiltinESMExports();
  return {
    arm: () => {
      armed = true;
    },
    restore: () => {
      fs.openSync = openSync;
      fs.writeSync = writeSync;
      syncBuiltinESMExports();
    },
  };
}

test('ENOSPC while writing a checkpoint: clear error, previous checkpoint intact, the rerun resumes to the same student', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'disk-full-'));
  try {
    const reference = await run(recipe(dir, 'reference'), { log: null });
    const seam = failWritesUnder(`${join(dir, 'full', 'checkpoints')}`);
    try {
      // onStep runs before the step's checkpoint (metrics first): arming at step 2 makes the write of step-000003 fail.
      await assert.rejects(
        run(recipe(dir, 'full'), {
          log: null,
          onStep: (r) => {
            if (r.step === 2) seam.arm();
          },
        }),
        (e: unknown) => {
          assert.ok(e instanceof StageError, String(e));
          assert.match((e as Error).message, /checkpointSink failed at step 3 \(the previous checkpoint is intact\): ENOSPC/);
          return true;
        },
      );
    } finally {
      seam.restore();
    }
    const runDir = join(dir, 'full');
    const scan = scanCheckpoints(runDir);
    assert.deepEqual(scan.problems, []);
    assert.deepEqual(
      readdirSync(join(runDir, 'checkpoints')).filter((n) => !n.startsWith('.')),
      ['step-000001', 'step-000002'],
    );
    const resumed = await run(recipe(dir, 'full'), { log: null });
    assert.equal(resumed.resumedFromStep, 2);
    assert.equal(maxDiffStudents(reference.studentDir, resumed.studentDir), 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const canMount = ((): boolean => {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false;
  const probe = mkdtempSync(join(tmpdir(), 'tmpfs-probe-'));
  const ok = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (ok) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return ok;
})();

test(
  'a real full disk (tmpfs) under checkpoints/: the CLI exits 2 saying the previous checkpoint is intact',
  { skip: canMount ? false : 'needs root and tmpfs mounts' },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'disk-tmpfs-'));
    const ckpt = join(dir, 'full', 'checkpoints');
    mkdirSync(ckpt, { recursive: true });
    // One checkpoint of the fixture student is ~527 KB (student 177 KB + AdamW moments 345 KB): two fit, the third does not.
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1300k', 'tmpfs', ckpt]).status, 0);
    try {
      const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...trainArgs(dir, 'full')], {
        encoding: 'utf8',
        cwd: ROOT,
        env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
      });
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /checkpointSink failed at step \d+ \(the previous checkpoint is intact\): ENOSPC/);
      const scan = scanCheckpoints(join(dir, 'full'));
      assert.deepEqual(scan.problems, []);
      assert.ok(scan.complete >= 1, 'the previous checkpoint is there');
    } finally {
      spawnSync('umount', [ckpt]);
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
