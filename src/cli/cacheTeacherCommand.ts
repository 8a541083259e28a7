/**
 * `distill cache-teacher`: runs the teacher once over the training samples of a later `distill run` and writes its
 * sparse targets to a folder of Arrow parts (pipelines/cacheTeacher.ts). The data flags are `distill run`'s and
 * must be given the same values: the run refuses a cache made on other data.
 *
 *   distill cache-teacher --teacher_path T --data_paths D --seq_length 2048 --out cache/ --method topk --top_k 32
 *   distill cache-teacher ... --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   (one part range per job)
 *   distill cache-teacher --out cache/ --merge                                       (after all shards: manifest)
 */
import { join } from 'node:path';
import { parseFlags, required, usage, type FlagSpecs } from './flags.ts';
import { CONFIG_FILE, readModelConfig } from '../checkpoint/load.ts';
import { checkSequenceLength } from '../model/config.ts';
import { BACKEND_CHOICES, type BackendChoice } from '../backend/select.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { ConfigError } from '../errors.ts';
import { DEFAULTS } from '../recipe/config.ts';
import { CACHE_METHODS, type CacheMethod } from '../cache/spec.ts';
import { VALUE_DTYPES, type ValueDtype } from '../cache/quantize.ts';
import { parseShard } from '../cache/layout.ts';
import { cacheTeacher, writeCacheManifest } from '../../pipelines/cacheTeacher.ts';

const FLAGS = {
  teacher_path: { kind: 'string', help: 'Hugging Face checkpoint directory of the teacher' },
  data_paths: { kind: 'string', help: 'as `distill run`: "w1 prefix1 w2 prefix2" or prefixes / Arrow shard dirs (default: the bundled Brown corpus)' },
  seq_length: { kind: 'int', help: 'tokens per sample, as the run', default: DEFAULTS.data.seqLength, min: 1 },
  split: { kind: 'string', help: 'train,valid,test weights, as the run', default: DEFAULTS.data.split },
  seed: { kind: 'int', help: 'data shuffle seed, as the run', default: DEFAULTS.data.seed },
  out: { kind: 'string', help: 'the cache folder (parts are added to it; a rerun skips the parts already there)' },
  method: {
    kind: 'string',
    help: 'topk: K largest log-probs + ghost mass; sample: N seeded draws from p_t; full: the whole log-softmax',
    default: 'topk',
    choices: CACHE_METHODS,
  },
  top_k: { kind: 'int', help: 'K for --method topk', default: 32, min: 1 },
  samples: { kind: 'int', help: 'N draws per position for --method sample', default: 50, min: 1 },
  sample_seed: { kind: 'int', help: 'seed of the draws (--method sample)', default: 1234 },
  value_dtype: { kind: 'string', help: 'how log-probs are stored', default: 'float32', choices: VALUE_DTYPES },
  temperature: { kind: 'number', help: 'τ of the cached softmax (the run must use the same τ for topk/sample)', default: 1 },
  num_samples: { kind: 'int', help: 'training samples to cache (default: --max_steps × --gbs, else one epoch)', min: 1 },
  max_steps: { kind: 'int', help: "the run's --max_steps, to cache max_steps × gbs samples", min: 1 },
  gbs: { kind: 'int', help: "the run's --gbs", default: DEFAULTS.trainer.globalBatchSize, min: 1 },
  shard: { kind: 'string', help: 'i/n: write only the i-th of n blocks of parts (0-based; Slurm array / indexed Job)' },
  merge: { kind: 'boolean', help: 'check that every sample is covered once and write manifest.msgpack (alone: no teacher run)' },
  part_samples: { kind: 'int', help: 'samples per part file (the unit of resume and sharding)', default: 1024, min: 1 },
  batch_samples: { kind: 'int', help: 'samples per teacher forward pass and record batch', default: 8, min: 1 },
  loss_chunk: { kind: 'int', help: 'token positions per [chunk, vocab] logits tensor', default: 256, min: 1 },
  backend: { kind: 'string', help: 'compute backend', default: 'auto', choices: BACKEND_CHOICES },
  help: { kind: 'boolean', help: 'print this help' },
} as const satisfies FlagSpecs;

export async function cacheTeacherMain(argv: string[]): Promise<void> {
  const cmd = 'distill cache-teacher';
  const { flags: f } = parseFlags(argv, FLAGS, cmd);
  if (f.help) return void console.log(usage(cmd, 'Run the teacher once over the training samples and cache its sparse targets.', FLAGS));
  const out = required(cmd, 'out', f.out);
  if (f.merge && !f.teacher_path) {
    const m = writeCacheManifest(out);
    console.log(JSON.stringify({ cache: out, parts: m.parts, samples: m.samples, manifest: true }));
    return;
  }
  if (f.num_samples !== undefined && f.max_steps !== undefined) throw new ConfigError(`${cmd}: give --num_samples or --max_steps/--gbs, not both`);
  const teacherPath = required(cmd, 'teacher_path', f.teacher_path);
  checkSequenceLength(readModelConfig(teacherPath), f.seq_length!, 'the teacher', join(teacherPath, CONFIG_FILE));
  const r = await cacheTeacher({
    teacherPath,
    data: { dataPaths: f.data_paths ?? defaultDataPaths(), seqLength: f.seq_length!, split: f.split!, seed: f.seed! },
    out,
    spec: {
      method: f.method as CacheMethod,
      topK: f.top_k!,
      samples: f.samples!,
      sampleSeed: f.sample_seed!,
      valueDtype: f.value_dtype as ValueDtype,
      temperature: f.temperature!,
    },
    numSamples: f.num_samples ?? (f.max_steps !== undefined ? f.max_steps * f.gbs! : undefined),
    partSamples: f.part_samples,
    batchSamples: f.batch_samples,
    chunkSize: f.loss_chunk,
    shard: f.shard ? parseShard(f.shard) : undefined,
    backend: f.backend as BackendChoice,
    log: (l) => process.stderr.write(l + '\n'),
  });
  if (f.merge && !r.complete) writeCacheManifest(out); // throws, naming the parts still missing
  console.log(
    JSON.stringify({
      cache: out,
      written_parts: r.written.length,
      skipped_parts: r.skipped.length,
      tokens: r.tokens,
      bytes: r.bytes,
      bytes_per_token: r.tokens > 0 ? r.bytes / r.tokens : null,
      seconds: r.seconds,
      complete: r.complete,
    }),
  );
}
