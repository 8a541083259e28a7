/**
 * Atomic file and directory writes: write under a temporary name in the same directory, fsync, then rename.
 * A reader (or a rerun after a crash) sees the old content or the new, never half of one.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';

let counter = 0;

/** A temporary sibling name that no other writer (process or call) uses. */
export function tempSibling(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${counter++}`);
}

export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = tempSibling(path);
  const fd = openSync(tmp, 'w');
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/**
 * Fills a directory through `fill(tmpDir)` and then renames it into place, replacing an older one.
 * The old directory is moved aside first and removed last, so a crash leaves the old or the new complete.
 */
export function writeDirAtomic(path: string, fill: (tmpDir: string) => void): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = tempSibling(path);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    fill(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = tempSibling(path);
  let moved = false;
  try {
    renameSync(path, old);
    moved = true;
  } catch {
    // no previous directory
  }
  renameSync(tmp, path);
  fsyncDir(dirname(path));
  if (moved) rmSync(old, { recursive: true, force: true });
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // some filesystems refuse fsync on directories; the rename is still atomic
  }
}
