/**
 * How a teacher cache is laid out on disk: a folder of part files, each holding a fixed block of samples, and an
 * optional manifest.
 *
 * Part p holds samples [p · partSamples, (p + 1) · partSamples) of the cache's range and is named by that range
 * (`part-000000000000-000000000256.arrow`), so any `--shard i/n` of the same cache writes the same files: shard i
 * takes the contiguous block of parts [⌊i·P/n⌋, ⌊(i+1)·P/n⌋). A part is written under a dot-prefixed temporary name
 * and renamed when complete, so a file with a part name is whole; readers ignore dot files.
 *
 * `manifest.msgpack` (msgpackr), written once every sample is covered: { format, format_version, cache_id,
 * sample_start, sample_end, parts: [{ file, start, end, bytes }] }. Readers check the files against it.
 */
import { readFileSync } from 'node:fs';
import { pack, unpack } from 'msgpackr';
import { ConfigError, FormatError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomicWrite.ts';
import { CACHE_FORMAT, CACHE_FORMAT_VERSION } from './fingerprint.ts';

export const MANIFEST_FILE = 'manifest.msgpack';
const PART_RE = /^part-(\d{12})-(\d{12})\.arrow$/;

export interface PartRange {
  start: number;
  end: number;
}

export function partFileName(r: PartRange): string {
  return `part-${String(r.start).padStart(12, '0')}-${String(r.end).padStart(12, '0')}.arrow`;
}

/** The range a part file's name claims, or null for files that are not parts (temporaries, the manifest). */
export function parsePartFileName(name: string): PartRange | null {
  const m = PART_RE.exec(name);
  return m ? { start: Number(m[1]), end: Number(m[2]) } : null;
}

/** All parts of the range [start, end), in order. */
export function partRanges(start: number, end: number, partSamples: number): PartRange[] {
  const out: PartRange[] = [];
  const first = Math.floor(start / partSamples);
  for (let p = first; p * partSamples < end; p++) out.push({ start: Math.max(start, p * partSamples), end: Math.min(end, (p + 1) * partSamples) });
  return out;
}

export interface Shard {
  index: number;
  count: number;
}

/** `--shard i/n` (0-based i). */
export function parseShard(text: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || !(count >= 1) || !(index >= 0 && index < count)) {
    throw new ConfigError(`--shard ${text}: give i/n with 0 ≤ i < n, e.g. --shard 3/8 (Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)`);
  }
  return { index, count };
}

/** The parts shard i of n writes: a contiguous block, the blocks of all shards tiling the parts once. */
export function shardParts(parts: PartRange[], shard: Shard): PartRange[] {
  const a = Math.floor((shard.index * parts.length) / shard.count);
  const b = Math.floor(((shard.index + 1) * parts.length) / shard.count);
  return parts.slice(a, b);
}

/**
 * Which samples of [start, end) the given ranges miss, and which they cover more than once. Both lists empty means
 * the ranges tile [start, end) exactly.
 */
export function coverage(ranges: PartRange[], start: number, end: number): { missing: PartRange[]; overlaps: PartRange[] } {
  const sorted = [...ranges].sort((a, b) => a.start - b.start || a.end - b.end);
  const missing: PartRange[] = [];
  const overlaps: PartRange[] = [];
  let at = start;
  for (const r of sorted) {
    if (r.start > at) missing.push({ start: at, end: r.start });
    if (r.start < at) overlaps.push({ start: r.start, end: Math.min(at, r.end) });
    at = Math.max(at, r.end);
  }
  if (at < end) missing.push({ start: at, end });
  return { missing, overlaps };
}

export const describeRanges = (rs: PartRange[], max = 5): string =>
  rs
    .slice(0, max)
    .map((r) => `[${r.start}, ${r.end})`)
    .join(', ') + (rs.length > max ? ` and ${rs.length - max} more` : '');

export interface ManifestPart extends PartRange {
  file: string;
  bytes: number;
}

export interface Manifest {
  format: string;
  format_version: string;
  cache_id: string;
  sample_start: number;
  sample_end: number;
  parts: ManifestPart[];
}

export function writeManifest(path: string, m: Omit<Manifest, 'format' | 'format_version'>): void {
  writeFileAtomic(path, pack({ format: CACHE_FORMAT, format_version: CACHE_FORMAT_VERSION, ...m }));
}

export function readManifest(path: string): Manifest {
  let m: Partial<Manifest>;
  try {
    m = unpack(readFileSync(path)) as Partial<Manifest>;
  } catch (e) {
    throw new FormatError(
      path,
      `cannot decode the msgpack manifest (${(e as Error).message}); delete it and run \`distill cache-teacher --out DIR --merge\` to rewrite it.`,
    );
  }
  if (m.format !== CACHE_FORMAT || !Array.isArray(m.parts) || typeof m.cache_id !== 'string') {
    throw new FormatError(path, 'not a teacher-cache manifest; delete it and run `distill cache-teacher --out DIR --merge` to rewrite it.');
  }
  return m as Manifest;
}
