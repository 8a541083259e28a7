/**
 * What a teacher cache was made from, stored in every part file's Arrow schema metadata as plain string keys (so
 * pyarrow/polars users read it with `schema.metadata`): the teacher's weights and config (hashModelFiles), the
 * tokenizer where the data records it, the data (dataSources.ts's fingerprint: paths, weights, document ranges,
 * samples per epoch, split, seed), seq_length, the method and its parameters, and the sample range.
 *
 * Reading a cache for a run compares these with the run (compatibility.ts); resuming or sharding a cache-teacher
 * job compares them with the parts already there, so parts of two different caches never join.
 */
import { createHash } from 'node:crypto';
import { DistillError, FormatError } from '../errors.ts';
import { CACHE_METHODS, type CacheMethod, type CacheSpec } from './spec.ts';
import { VALUE_DTYPES, type ValueDtype } from './quantize.ts';

export const CACHE_FORMAT = 'logit-distill-teacher-cache';
export const CACHE_FORMAT_VERSION = '1';

export interface CacheFingerprint extends CacheSpec {
  teacherSha256: string;
  vocabSize: number;
  /** Per data component, its tokenizer's sha256 or "unknown" (Megatron datasets do not record it), comma-joined. */
  tokenizerSha256: string;
  dataFingerprint: string;
  dataPaths: string;
  split: string;
  dataSeed: number;
  /** Training samples in one epoch of the data (readBatches reads sample i mod this). */
  samplesPerEpoch: number;
  seqLength: number;
  /** The cache holds samples [sampleStart, sampleEnd). */
  sampleStart: number;
  sampleEnd: number;
  /** Part p holds samples [p · partSamples, (p + 1) · partSamples) ∩ the range; fixed so any sharding makes the same parts. */
  partSamples: number;
  /** Samples per record batch inside a part (the last batch of a part may hold fewer). */
  batchSamples: number;
}

/** The cache refused for a run or a resume: `parts` names what differs (teacher, data, seq_length, ...). */
export class CacheMismatchError extends DistillError {
  constructor(
    readonly parts: string[],
    message: string,
  ) {
    super(message);
  }
}

/** The cache folder lacks parts, overlaps itself, or holds a file that is not a complete part. */
export class CacheIncompleteError extends DistillError {}

type Key = keyof CacheFingerprint;
const KEYS: Record<Key, string> = {
  teacherSha256: 'teacher_sha256',
  vocabSize: 'vocab_size',
  tokenizerSha256: 'tokenizer_sha256',
  dataFingerprint: 'data_fingerprint',
  dataPaths: 'data_paths',
  split: 'split',
  dataSeed: 'data_seed',
  samplesPerEpoch: 'samples_per_epoch',
  seqLength: 'seq_length',
  sampleStart: 'sample_start',
  sampleEnd: 'sample_end',
  partSamples: 'part_samples',
  batchSamples: 'batch_samples',
  method: 'method',
  topK: 'top_k',
  samples: 'samples',
  sampleSeed: 'sample_seed',
  valueDtype: 'value_dtype',
  temperature: 'temperature',
};
const NUMERIC = new Set<Key>([
  'vocabSize',
  'dataSeed',
  'samplesPerEpoch',
  'seqLength',
  'sampleStart',
  'sampleEnd',
  'partSamples',
  'batchSamples',
  'topK',
  'samples',
  'sampleSeed',
  'temperature',
]);

/** What each field is called in a refusal: the part of the setup a user would change. */
const PART: Record<Key, string> = {
  teacherSha256: 'teacher',
  vocabSize: 'vocabulary',
  tokenizerSha256: 'tokenizer',
  dataFingerprint: 'data',
  dataPaths: 'data',
  split: 'data',
  dataSeed: 'data',
  samplesPerEpoch: 'data',
  seqLength: 'seq_length',
  sampleStart: 'sample range',
  sampleEnd: 'sample range',
  partSamples: 'part layout',
  batchSamples: 'part layout',
  method: 'method',
  topK: 'method',
  samples: 'method',
  sampleSeed: 'method',
  valueDtype: 'value_dtype',
  temperature: 'temperature',
};

export function fingerprintMetadata(fp: CacheFingerprint): Map<string, string> {
  const m = new Map<string, string>([
    ['format', CACHE_FORMAT],
    ['format_version', CACHE_FORMAT_VERSION],
  ]);
  for (const [k, name] of Object.entries(KEYS) as [Key, string][]) m.set(name, String(fp[k]));
  m.set('cache_id', cacheId(fp));
  return m;
}

export function parseFingerprint(file: string, m: Map<string, string>): CacheFingerprint {
  if (m.get('format') !== CACHE_FORMAT) {
    throw new FormatError(
      file,
      `schema metadata format is ${JSON.stringify(m.get('format'))}, expected "${CACHE_FORMAT}": not a teacher-cache part. Remove it from the cache folder.`,
    );
  }
  if (m.get('format_version') !== CACHE_FORMAT_VERSION) {
    throw new FormatError(
      file,
      `teacher-cache format_version ${m.get('format_version')}, expected ${CACHE_FORMAT_VERSION}: written by another version; re-run cache-teacher.`,
    );
  }
  const out: Record<string, string | number> = {};
  for (const [k, name] of Object.entries(KEYS) as [Key, string][]) {
    const v = m.get(name);
    if (v === undefined) throw new FormatError(file, `schema metadata has no "${name}"; re-run cache-teacher.`);
    out[k] = NUMERIC.has(k) ? Number(v) : v;
  }
  const fp = out as unknown as CacheFingerprint;
  if (!CACHE_METHODS.includes(fp.method as CacheMethod) || !VALUE_DTYPES.includes(fp.valueDtype as ValueDtype)) {
    throw new FormatError(file, `schema metadata method "${fp.method}" / value_dtype "${fp.valueDtype}" is not known to this version.`);
  }
  return fp;
}

/** A short stable id of the cache's content (every field but the part layout). */
export function cacheId(fp: CacheFingerprint): string {
  const content = (Object.keys(KEYS) as Key[])
    .filter((k) => PART[k] !== 'part layout')
    .sort()
    .map((k) => [k, fp[k]]);
  return createHash('sha256').update(JSON.stringify(content)).digest('hex').slice(0, 16);
}

/** The fields where `a` and `b` differ, as "part: field a vs b" lines, grouped by part. */
export function differences(a: CacheFingerprint, b: CacheFingerprint, keys: Key[] = Object.keys(KEYS) as Key[]): { parts: string[]; lines: string[] } {
  const parts: string[] = [];
  const lines: string[] = [];
  for (const k of keys) {
    if (a[k] === b[k]) continue;
    if (!parts.includes(PART[k])) parts.push(PART[k]);
    lines.push(`${PART[k]} differs: ${KEYS[k]} ${short(a[k])} vs ${short(b[k])}`);
  }
  return { parts, lines };
}

const short = (v: string | number): string => (typeof v === 'string' && /^[0-9a-f]{40,}$/.test(v) ? v.slice(0, 12) : JSON.stringify(v));
