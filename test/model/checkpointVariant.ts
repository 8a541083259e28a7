/**
 * Test helper: a copy of a fixture checkpoint in a temporary directory, with its tensors and config edited, for
 * model variants the fixtures do not cover and for checkpoints that must fail to load.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeSafetensors, readAllSafetensors, type TensorToWrite } from '../../src/io/safetensors.ts';
import { fixture } from '../helpers/fixtures.ts';

export type F32Tensor = TensorToWrite & { data: Float32Array };

let root: string | null = null;
let counter = 0;

/** A fresh directory under one per-process temporary root, removed at exit. */
export function scratchDir(label: string): string {
  if (!root) {
    const r = mkdtempSync(join(tmpdir(), 'distill-model-test-'));
    root = r;
    process.on('exit', () => rmSync(r, { recursive: true, force: true }));
  }
  const dir = join(root, `${label}-${counter++}`);
  mkdirSync(dir);
  return dir;
}

/** Copies fixture `name` with `edit` applied to its tensors and `config` to its config.json. */
export function checkpointVariant(
  name: string,
  edit: (t: F32Tensor[]) => F32Tensor[],
  config?: (c: Record<string, unknown>) => Record<string, unknown>,
): string {
  const dir = scratchDir(name);
  const tensors = [...readAllSafetensors(fixture(name, 'model.safetensors'))].map(([n, t]): F32Tensor => ({
    name: n,
    dtype: 'F32',
    shape: t.shape,
    data: t.data as Float32Array,
  }));
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(edit(tensors), { format: 'pt' }));
  const cfg = JSON.parse(readFileSync(fixture(name, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config ? config(cfg) : cfg));
  return dir;
}
