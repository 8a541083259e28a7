/**
 * Paths to the reference fixtures (made by transformers + PyTorch, tokenizers, Megatron-LM; see their README),
 * and the comparisons the tests use. Tests read the fixtures in place: never copy or regenerate them.
 */
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { readFileSync } from 'node:fs';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
// DISTILL_FIXTURES points elsewhere only on the device machine, where ../shared does not travel.
export const FIXTURES = resolve(process.env.DISTILL_FIXTURES ?? resolve(ROOT, '../shared/fixtures'));
export const fixture = (...p: string[]): string => join(FIXTURES, ...p);

export interface ExpectedJson {
  losses: Record<string, number>;
  train: {
    optimizer: string;
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay: number;
    clip_grad_norm: number;
    trajectory: { step: number; loss: number; grad_norm: number }[];
  };
  [k: string]: unknown;
}

export function expectedJson(): ExpectedJson {
  return JSON.parse(readFileSync(fixture('expected.json'), 'utf8')) as ExpectedJson;
}

/** ‖a − b‖ / ‖b‖, the relative error the issues specify. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
