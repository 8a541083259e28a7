/**
 * A fingerprint of a checkpoint's files, so that a resumed run can tell that its teacher or student is the one it
 * started with. Hashes bytes, not parsed tensors: re-saving the same weights in another dtype is another model.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.ts';
import { CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE } from './load.ts';

const CHUNK = 16 << 20;

function hashFile(h: ReturnType<typeof createHash>, path: string): void {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}

/** The weight files of `dir`, in a fixed order: model.safetensors, or the index then its shards sorted by name. */
function weightFiles(dir: string): string[] {
  if (existsSync(join(dir, WEIGHTS_FILE))) return [WEIGHTS_FILE];
  const index = join(dir, INDEX_FILE);
  if (!existsSync(index)) throw new CheckpointError(`${dir}: no ${WEIGHTS_FILE} or ${INDEX_FILE} to fingerprint`);
  const map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
  return [INDEX_FILE, ...[...new Set(Object.values(map))].sort()];
}

/** sha256 (hex) over config.json and the safetensors bytes of `dir`, each file's name and length mixed in. */
export function hashModelFiles(dir: string): string {
  const h = createHash('sha256');
  for (const name of [CONFIG_FILE, ...weightFiles(dir)]) {
    const path = join(dir, name);
    if (!existsSync(path)) throw new CheckpointError(`${dir}: ${name} is missing; cannot fingerprint the checkpoint`);
    h.update(`${name}\0`);
    hashFile(h, path);
    h.update('\0');
  }
  return h.digest('hex');
}
