/**
 * The fuzz harness shared by the fuzz tests: seeded mutations of bytes and JSON, and a runner that classifies each
 * case. A case passes when it succeeds (a harmless mutation) or throws the project's DistillError (or a subclass:
 * FormatError, ConfigError, CheckpointError, ...). Anything else — a TypeError or RangeError from deep inside, a
 * case slower than its bound (a hang in the making), an allocation failure — is reported with the case's seed.
 */
import { RecordBatchReader } from 'apache-arrow';
import { DistillError } from '../../src/errors.ts';
import { prng } from './killHarness.ts';

export { prng };

export interface FuzzReport {
  cases: number;
  ok: number;
  refused: number;
  failures: string[];
  slowestMs: number;
}

/** Runs `n` cases; `one(rng, i)` builds and runs case i from its own seeded PRNG (reproducible alone). */
export async function fuzz(name: string, seed: number, n: number, one: (rng: () => number, i: number) => unknown, boundMs = 2000): Promise<FuzzReport> {
  const r: FuzzReport = { cases: 0, ok: 0, refused: 0, failures: [], slowestMs: 0 };
  for (let i = 0; i < n; i++) {
    const rng = prng(seed * 1_000_003 + i);
    const t0 = performance.now();
    if (process.env.FUZZ_TRACE) process.stderr.write(`${name} ${i}\n`);
    try {
      await one(rng, i);
      r.ok++;
    } catch (e) {
      if (e instanceof DistillError) r.refused++;
      else if (r.failures.length < 10)
        r.failures.push(
          `${name} case ${i} (seed ${seed}): ${e instanceof Error ? `${e.name}: ${e.message.slice(0, 200)}\n${e.stack?.split('\n').slice(1, 4).join('\n')}` : String(e)}`,
        );
      else r.failures.push(`${name} case ${i}`);
    }
    const ms = performance.now() - t0;
    r.slowestMs = Math.max(r.slowestMs, ms);
    if (ms > boundMs) r.failures.push(`${name} case ${i} (seed ${seed}) took ${Math.round(ms)} ms, over its ${boundMs} ms bound`);
    r.cases++;
  }
  return r;
}

const int = (rng: () => number, n: number): number => Math.floor(rng() * n);

/** One byte-level mutation: truncation, bit flips, a random run of bytes, or flips within the first `head` bytes. */
export function mutateBytes(src: Uint8Array, rng: () => number, head = 64): Buffer {
  const b = Buffer.from(src);
  switch (int(rng, 5)) {
    case 0:
      return b.subarray(0, int(rng, b.length));
    case 1: {
      for (let k = 1 + int(rng, 8); k > 0; k--) {
        const at = int(rng, b.length);
        b[at] ^= 1 << int(rng, 8);
      }
      return b;
    }
    case 2: {
      const at = int(rng, b.length);
      for (let k = at; k < Math.min(b.length, at + 1 + int(rng, 16)); k++) b[k] = int(rng, 256);
      return b;
    }
    case 3: {
      for (let k = 1 + int(rng, 3); k > 0; k--) {
        const at = int(rng, Math.min(head, b.length));
        b[at] ^= 1 << int(rng, 8);
      }
      return b;
    }
    default: {
      // Extreme values where a length or count might live.
      const at = int(rng, Math.min(head, Math.max(1, b.length - 8)));
      const v = [0xff, 0x7f, 0x80, 0x00][int(rng, 4)];
      for (let k = at; k < Math.min(b.length, at + 1 + int(rng, 8)); k++) b[k] = v;
      return b;
    }
  }
}

/** Values a field should never be trusted to hold. */
export const ODD_VALUES: unknown[] = [
  -1,
  0,
  1,
  2 ** 40,
  2 ** 53,
  2 ** 64,
  1.5,
  -0.5,
  1e308,
  -1e308,
  'x',
  '',
  '64',
  null,
  true,
  false,
  [],
  [1, 2],
  {},
  { a: 1 },
  2 ** 31,
  2 ** 24 + 1,
  3,
];

export const pick = <T>(rng: () => number, xs: readonly T[]): T => xs[int(rng, xs.length)];

/** One JSON-level mutation of an object: delete a key, replace a value with an odd one, or do it one level down. */
export function mutateJson(obj: Record<string, unknown>, rng: () => number): Record<string, unknown> {
  const out = structuredClone(obj);
  const keys = Object.keys(out);
  if (keys.length === 0) return out;
  const k = pick(rng, keys);
  const v = out[k];
  const r = rng();
  if (r < 0.25) delete out[k];
  else if (r < 0.75 || typeof v !== 'object' || v === null) out[k] = pick(rng, ODD_VALUES);
  else if (Array.isArray(v)) {
    if (v.length) v[int(rng, v.length)] = pick(rng, ODD_VALUES);
    else out[k] = pick(rng, ODD_VALUES);
  } else out[k] = mutateJson(v as Record<string, unknown>, rng);
  return out;
}

export const randInt = int;

/**
 * The record-batch bodies (the column buffers) of a clean Arrow IPC file, from its footer. Mutations are confined
 * to them (or are truncations): apache-arrow 21 trusts the vector lengths inside its flatbuffer metadata (schema,
 * record-batch headers, footer), and a flip there makes it allocate until the heap is exhausted before any check
 * of ours runs; that finding is the todo test in fuzzFormats.test.ts.
 */
export function arrowBodies(clean: Uint8Array): { start: number; end: number }[] {
  const reader = RecordBatchReader.from(clean);
  reader.open();
  const out: { start: number; end: number }[] = [];
  for (let k = 0; k < reader.numRecordBatches; k++) {
    const b = reader.footer!.getRecordBatch(k)!;
    const start = Number(b.offset) + b.metaDataLength;
    out.push({ start, end: start + Number(b.bodyLength) });
  }
  return out;
}

export function mutateArrowBody(src: Uint8Array, rng: () => number, bodies: { start: number; end: number }[]): Buffer {
  const b = Buffer.from(src);
  if (rng() < 0.2) return b.subarray(0, int(rng, b.length));
  const { start, end } = pick(rng, bodies);
  const region = mutateBytes(b.subarray(start, end), rng, end - start);
  if (region.length === end - start) region.copy(b, start);
  else b.fill(0, start + region.length, end); // a "truncated" body: zeroed tail, same file length
  return b;
}
