/**
 * `cache-teacher`: runs the frozen teacher once over the training samples and writes a sparse view of its next-token
 * distribution at every position (src/cache/spec.ts) as Arrow part files (src/io/teacherCache.ts), so that later
 * runs distil from the cache without loading the teacher.
 *
 * The samples are `distill run`'s: the same SampleSource over the same --data_paths/--split/--seed/--seq_length,
 * read by the same readBatches and passed through the same teacherTargets operator; row i of the cache is what the
 * teacher says on training sample i. The work is split in parts of fixed sample ranges; a part is written to a
 * temporary file and renamed when complete, and a rerun skips the parts that exist, so a killed job resumes where it
 * stopped and `--shard i/n` jobs fill one folder between them.
 */
import { concatMap, lastValueFrom, tap } from 'rxjs';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { disposeBatch, type TeacherBatch } from '../src/train/batch.ts';
import { Credits } from '../src/train/credits.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import { ConfigError } from '../src/errors.ts';
import { selectBackend, type BackendChoice } from '../src/backend/select.ts';
import { loadModel } from '../src/checkpoint/load.ts';
import { hashModelFiles } from '../src/checkpoint/hash.ts';
import { openTokenDataset } from '../src/data/dataset.ts';
import { openDataSources } from '../src/train/dataSources.ts';
import { distillationRecipe, type DataConfig } from '../src/recipe/config.ts';
import { TeacherCachePartWriter, checkSameCache, listParts } from '../src/io/teacherCache.ts';
import { CacheIncompleteError, CacheMismatchError, cacheId, type CacheFingerprint } from '../src/cache/fingerprint.ts';
import { coverage, describeRanges, MANIFEST_FILE, partRanges, shardParts, writeManifest, type PartRange, type Shard } from '../src/cache/layout.ts';
import { concatRows, sliceRows, sparsifyLogits } from '../src/cache/sparsify.ts';
import { validateSpec, type CacheRows, type CacheSpec } from '../src/cache/spec.ts';
import { lossChunkRows } from '../src/losses/chunkedKd.ts';

export interface WriteCacheOptions {
  teacher: CausalLM;
  /** hashModelFiles of the teacher's checkpoint (or any stable id of an in-memory teacher). */
  teacherSha256: string;
  /** The run's training samples, and the fingerprint `distill run` computes for them (dataSources.ts). */
  source: SampleSource;
  data: DataConfig;
  dataFingerprint: string;
  tokenizerSha256: string;
  out: string;
  spec: CacheSpec;
  /** Cache samples [0, numSamples) (at most one epoch: readBatches wraps there). */
  numSamples: number;
  /** Samples per part file (the unit of resume and of sharding); a multiple of batchSamples. */
  partSamples?: number;
  /** Samples per teacher forward pass and per record batch. */
  batchSamples?: number;
  /** Token positions per [chunk, V] logits tensor. */
  chunkSize?: number;
  shard?: Shard;
  log?: (line: string) => void;
  /** Stops after the part being written (which is completed). */
  signal?: AbortSignal;
}

export interface CacheTeacherResult {
  dir: string;
  fingerprint: CacheFingerprint;
  written: PartRange[];
  skipped: PartRange[];
  /** Bytes of the parts written by this call, and the tokens in them. */
  bytes: number;
  tokens: number;
  seconds: number;
  /** Whether the folder now holds every part (then it has a manifest). */
  complete: boolean;
}

export async function writeTeacherCache(o: WriteCacheOptions): Promise<CacheTeacherResult> {
  const log = o.log ?? (() => {});
  const batchSamples = o.batchSamples ?? 8;
  const partSamples = o.partSamples ?? 128 * batchSamples;
  const seq = o.data.seqLength;
  validateSpec(o.spec, o.teacher.config.vocabSize);
  if (!(Number.isInteger(batchSamples) && batchSamples >= 1)) throw new ConfigError(`--batch_samples ${batchSamples} must be a positive integer`);
  if (!(Number.isInteger(partSamples) && partSamples >= batchSamples && partSamples % batchSamples === 0)) {
    throw new ConfigError(`--part_samples ${partSamples} must be a positive multiple of --batch_samples ${batchSamples}`);
  }
  const end = Math.min(o.numSamples, o.source.numSamples);
  if (!(end >= 1)) throw new ConfigError(`nothing to cache: --num_samples ${o.numSamples}, ${o.source.numSamples} training samples per epoch`);
  const fp: CacheFingerprint = {
    ...o.spec,
    teacherSha256: o.teacherSha256,
    vocabSize: o.teacher.config.vocabSize,
    tokenizerSha256: o.tokenizerSha256,
    dataFingerprint: o.dataFingerprint,
    dataPaths: o.data.dataPaths,
    split: o.data.split,
    dataSeed: o.data.seed,
    samplesPerEpoch: o.source.numSamples,
    seqLength: seq,
    sampleStart: 0,
    sampleEnd: end,
    partSamples,
    batchSamples,
  };
  const all = partRanges(0, end, partSamples);
  const mine = o.shard ? shardParts(all, o.shard) : all;
  const existing = listParts(o.out).parts;
  checkSameCache(o.out, existing, fp);
  const have = new Set(existing.map((p) => `${p.start}:${p.end}`));
  const todo = mine.filter((r) => !have.has(`${r.start}:${r.end}`));
  const skipped = mine.filter((r) => have.has(`${r.start}:${r.end}`));
  log(
    `cache-teacher: ${o.out}: cache ${cacheId(fp)}, samples [0, ${end}) in ${all.length} parts; this job: ${mine.length} parts${o.shard ? ` (shard ${o.shard.index}/${o.shard.count})` : ''}, ${skipped.length} already written`,
  );

  const t0 = performance.now();
  const written: PartRange[] = [];
  let bytes = 0;
  for (const part of todo) {
    if (o.signal?.aborted) break;
    bytes += await writePart(o, fp, part, batchSamples);
    written.push(part);
    log(`cache-teacher: wrote samples [${part.start}, ${part.end}) (${written.length}/${todo.length})`);
    await new Promise((r) => setImmediate(r)); // lets a stop signal in between parts
  }
  const complete = isComplete(o.out, fp);
  if (complete) writeCacheManifest(o.out);
  const tokens = written.reduce((a, r) => a + (r.end - r.start) * seq, 0);
  return { dir: o.out, fingerprint: fp, written, skipped, bytes, tokens, seconds: (performance.now() - t0) / 1000, complete };
}

/** One part: the teacher over its samples, batch by batch, each batch a record batch; renamed when whole. */
async function writePart(o: WriteCacheOptions, fp: CacheFingerprint, part: PartRange, b: number): Promise<number> {
  const writer = new TeacherCachePartWriter(o.out, fp, part);
  const seq = fp.seqLength;
  const chunk = lossChunkRows(o.chunkSize ?? 0, o.teacher.config.vocabSize);
  // One batch in flight: the rows are read back asynchronously (webgpu has no synchronous read), and without a
  // credit the source would run the teacher on every batch of the part while the first one is being read.
  const credits = new Credits(1);
  try {
    // readBatches' step s reads samples [s·b, (s + 1)·b): the run's indexing. The last batch of the range may run
    // past its end (readBatches wraps at the epoch); those rows are dropped.
    const batches = readBatches(o.source, {
      seqLength: seq,
      globalBatchSize: b,
      microBatchSize: b,
      startStep: part.start / b,
      maxSteps: Math.ceil(part.end / b),
      credits,
    });
    await lastValueFrom(
      batches.pipe(
        teacherTargets(o.teacher),
        // In order, as the writer needs (one at a time anyway, by the credit).
        concatMap(async (batch: TeacherBatch) => {
          const first = batch.position.firstSample;
          const count = Math.min(b, part.end - first);
          try {
            return { first, count, rows: await teacherRows(batch, fp, count * seq, chunk) };
          } finally {
            disposeBatch(batch);
          }
        }),
        tap(({ first, count, rows }) => {
          writer.write(first, count, rows);
          credits.release();
        }),
      ),
      { defaultValue: null },
    );
    return writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  } finally {
    // Lets a source still waiting for a credit (after an error downstream) end.
    credits.close();
  }
}

/** The cache rows of a batch's first `keep` positions, the logits made and dropped chunk by chunk. */
async function teacherRows(batch: TeacherBatch, fp: CacheFingerprint, keep: number, chunk: number): Promise<CacheRows> {
  const t = batch.teacher;
  if (t?.kind !== 'hidden') throw new Error('cache-teacher: the teacher stage gave no hidden states');
  const out: CacheRows[] = [];
  for (let s = 0; s < keep; s += chunk) {
    const e = Math.min(keep, s + chunk);
    const logits = tf.tidy(() => tf.matMul(tf.slice(t.hidden, [s, 0], [e - s, t.hidden.shape[1]]), t.head, false, true) as tf.Tensor2D);
    try {
      out.push(await sparsifyLogits(logits, fp, { firstSample: batch.position.firstSample, seqLength: fp.seqLength, firstRow: s }));
    } finally {
      logits.dispose();
    }
  }
  const rows = concatRows(out);
  return rows.rows === keep ? rows : sliceRows(rows, 0, keep);
}

function isComplete(dir: string, fp: CacheFingerprint): boolean {
  const { parts } = listParts(dir);
  const c = coverage(parts, fp.sampleStart, fp.sampleEnd);
  return c.missing.length === 0 && c.overlaps.length === 0;
}

/**
 * `--merge`: checks that the folder's parts (written by any number of shard jobs) tile the cache's range exactly
 * once, removes temporaries of interrupted writers, and writes manifest.msgpack. Throws, naming the missing ranges,
 * when a part is missing.
 */
export function writeCacheManifest(dir: string): { parts: number; samples: number } {
  const { parts, temporaries } = listParts(dir);
  if (parts.length === 0) throw new CacheIncompleteError(`${dir}: no complete part files to merge`);
  checkSameCache(dir, parts);
  const fp = parts[0].fp;
  const { missing, overlaps } = coverage(parts, fp.sampleStart, fp.sampleEnd);
  if (missing.length > 0 || overlaps.length > 0) {
    throw new CacheIncompleteError(
      `${dir}: cannot merge: ${missing.length > 0 ? `samples ${describeRanges(missing)} have no part` : `samples ${describeRanges(overlaps)} are in two parts`}. ` +
        'Run (or re-run) the cache-teacher shard jobs that write them, then --merge again.',
    );
  }
  // Complete: no writer has work left here, so what is left under temporary names is debris of killed jobs.
  for (const t of temporaries) rmSync(join(dir, t), { force: true });
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  writeManifest(join(dir, MANIFEST_FILE), {
    cache_id: cacheId(fp),
    sample_start: fp.sampleStart,
    sample_end: fp.sampleEnd,
    parts: sorted.map(({ file, start, end, bytes }) => ({ file, start, end, bytes })),
  });
  return { parts: parts.length, samples: fp.sampleEnd - fp.sampleStart };
}

export interface CacheTeacherArgs extends Omit<
  WriteCacheOptions,
  'teacher' | 'teacherSha256' | 'source' | 'dataFingerprint' | 'tokenizerSha256' | 'numSamples'
> {
  teacherPath: string;
  /** Default: one epoch of the training split. */
  numSamples?: number;
  backend?: BackendChoice;
}

/** The whole job from paths: loads the teacher and the data the way `distill run` does, then writeTeacherCache. */
export async function cacheTeacher(a: CacheTeacherArgs): Promise<CacheTeacherResult> {
  await selectBackend(a.backend ?? 'auto', { log: a.log ?? null });
  const teacherSha256 = hashModelFiles(a.teacherPath);
  const teacher = await loadModel(a.teacherPath, { trainable: false });
  // The run opens its data with the student's vocabulary; ids past the teacher's would be refused here instead.
  const recipe = distillationRecipe({ name: 'cache-teacher', studentPath: a.teacherPath, teacherPath: a.teacherPath, data: a.data });
  let sources: ReturnType<typeof openDataSources> | null = null;
  try {
    sources = openDataSources(recipe, teacher.config.vocabSize);
    const tokenizers = sources.train.components.map((c) => {
      const ds = openTokenDataset(c.path);
      try {
        return ds.tokenizerSha256 ?? 'unknown';
      } finally {
        ds.close();
      }
    });
    return await writeTeacherCache({
      ...a,
      teacher,
      teacherSha256,
      source: sources.train,
      dataFingerprint: sources.fingerprint,
      tokenizerSha256: tokenizers.join(','),
      numSamples: a.numSamples ?? sources.train.numSamples,
    });
  } catch (e) {
    if (e instanceof CacheMismatchError) throw new CacheMismatchError(e.parts, `${e.message} (teacher ${a.teacherPath})`);
    throw e;
  } finally {
    sources?.train.close();
    sources?.valid?.close();
    teacher.dispose();
  }
}
