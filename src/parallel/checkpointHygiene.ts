/**
 * A worker killed while writing a checkpoint leaves temporary directories (names starting with '.') and, if it
 * died while deleting an old checkpoint, a step-* directory missing parts. Neither is ever resumed from
 * (listCheckpoints skips them) but both would pile up; the launcher removes them when no worker is running.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { checkpointsDir } from '../train/trainingCheckpoint.ts';

const PARTS = ['state.json', 'optimizer.safetensors', join('student', 'model.safetensors'), join('student', 'config.json')];

/** Removes leftovers; returns the names removed. Call only while no process of this run is alive. */
export function removeIncompleteCheckpoints(runDir: string): string[] {
  const root = checkpointsDir(runDir);
  if (!existsSync(root)) return [];
  const removed: string[] = [];
  for (const name of readdirSync(root)) {
    const dir = join(root, name);
    const incomplete = name.startsWith('.') || (/^step-\d+$/.test(name) && PARTS.some((p) => !existsSync(join(dir, p))));
    if (incomplete) {
      rmSync(dir, { recursive: true, force: true });
      removed.push(name);
    }
  }
  return removed;
}
