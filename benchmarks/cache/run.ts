/**
 * Teacher-cache benchmark (`node --import tsx benchmarks/cache/run.ts [--steps N] [--seq N] [--gbs N] [--keep]`):
 *
 * 1. bytes per token and write throughput of `cache-teacher` for each method (full, top-K, sampled) and value dtype;
 * 2. the speed of `distill run --teacher_cache` against online distillation of the same student from a teacher 2×
 *    wider and 2× deeper (the bundled Llama configs, random init, written to a temp dir), on the bundled Brown data;
 * 3. the students' validation forward KL to the teacher after the same steps, for online, full, top-K and sampled.
 *
 * The teacher is initialised with a larger initializer_range (0.15 instead of 0.02) so that its next-token
 * distribution is peaked like a trained model's rather than almost uniform: with a flat teacher the top-K would
 * hold almost no mass and the comparison would say nothing. Everything runs on wasm, one core.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlags } from '../../src/cli/flags.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { initModelDir } from '../../src/cli/initCommand.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { defaultDataPaths } from '../../src/data/defaults.ts';
import { openSampleSource } from '../../src/train/dataSources.ts';
import { distillationRecipe, type DataConfig, type DistillationRecipe } from '../../src/recipe/config.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import type { CacheSpec } from '../../src/cache/spec.ts';
import type { ValueDtype } from '../../src/cache/quantize.ts';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { run } from '../../pipelines/run.ts';
import { evaluateOn } from '../../pipelines/evaluate.ts';
import { TeacherCache } from '../../src/io/teacherCache.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FLAGS = {
  steps: { kind: 'int', help: 'training steps of each run', default: 20, min: 1 },
  seq: { kind: 'int', help: 'seq_length', default: 64, min: 8 },
  gbs: { kind: 'int', help: 'samples per step (one micro-batch)', default: 8, min: 1 },
  top_k: { kind: 'int', help: 'K of the top-K caches', default: 32, min: 1 },
  samples: { kind: 'int', help: 'N draws of the sampled caches', default: 50, min: 1 },
  val_batches: { kind: 'int', help: 'validation micro-batches for the KL', default: 8, min: 1 },
  keep: { kind: 'boolean', help: 'keep the temp folder' },
} as const;

interface CacheRow {
  method: string;
  dtype: ValueDtype;
  bytesPerToken: number;
  writeTokensPerS: number;
  dir: string;
}
interface TrainRow {
  label: string;
  seconds: number;
  tokensPerS: number;
  validKl: number;
  finalLoss: number;
}

async function main(): Promise<void> {
  const { flags: f } = parseFlags(process.argv.slice(2), FLAGS, 'benchmarks/cache/run.ts');
  const backend = await selectBackend('wasm', { log: null });
  const tmp = mkdtempSync(join(tmpdir(), 'cache-bench-'));
  const say = (l: string): void => void process.stderr.write(l + '\n');
  try {
    const teacherConfig = JSON.parse(readFileSync(join(ROOT, 'data/models/teacher.config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(tmp, 'teacher.config.json'), JSON.stringify({ ...teacherConfig, initializer_range: 0.15 }));
    await initModelDir(join(tmp, 'teacher.config.json'), join(tmp, 'teacher'), 1);
    await initModelDir(join(ROOT, 'data/models/student.config.json'), join(tmp, 'student'), 2);
    const data: DataConfig = { dataPaths: defaultDataPaths(), seqLength: f.seq!, split: '99,1,0', seed: 1234 };
    const numSamples = f.steps! * f.gbs!;
    const tokens = numSamples * f.seq!;

    // 1. Caches: every method × dtype, each written from scratch.
    const methods: [string, Omit<CacheSpec, 'valueDtype'>][] = [
      ['full', { method: 'full', topK: 0, samples: 0, sampleSeed: 0, temperature: 1 }],
      [`topk K=${f.top_k}`, { method: 'topk', topK: f.top_k!, samples: 0, sampleSeed: 0, temperature: 1 }],
      [`sample N=${f.samples}`, { method: 'sample', topK: 0, samples: f.samples!, sampleSeed: 7, temperature: 1 }],
    ];
    const caches: CacheRow[] = [];
    for (const [label, m] of methods) {
      for (const dtype of ['float32', 'float16', 'uint8'] as ValueDtype[]) {
        const dir = join(tmp, `cache-${m.method}-${dtype}`);
        const t0 = performance.now();
        const r = await cacheTeacher({
          teacherPath: join(tmp, 'teacher'),
          data,
          out: dir,
          spec: { ...m, valueDtype: dtype },
          numSamples,
          backend: 'wasm',
          batchSamples: f.gbs,
          partSamples: f.gbs! * 8,
        });
        const s = (performance.now() - t0) / 1000;
        caches.push({ method: label, dtype, bytesPerToken: r.bytes / r.tokens, writeTokensPerS: r.tokens / s, dir });
        say(`cache ${label} ${dtype}: ${(r.bytes / r.tokens).toFixed(1)} B/token, ${(r.tokens / s).toFixed(0)} tokens/s`);
        if (m.method === 'full' && dtype !== 'float32') rmSync(dir, { recursive: true, force: true });
      }
    }

    // How much of the teacher's mass the top-K holds: what the ghost bucket has to stand for.
    const topkCache = TeacherCache.open(caches.find((c) => c.method.startsWith('topk') && c.dtype === 'float32')!.dir);
    const ghost = topkCache.rowsOf(Array.from({ length: numSamples }, (_, i) => i)).ghost!;
    const meanTopK = 1 - ghost.reduce((a, x) => a + x, 0) / ghost.length;
    topkCache.close();

    // 2–3. Training: online, then from the caches; validation KL of each student against the teacher.
    const recipe = (name: string, teacher: { teacherPath?: string; teacherCache?: string }): DistillationRecipe =>
      distillationRecipe({
        name,
        dir: tmp,
        studentPath: join(tmp, 'student'),
        ...teacher,
        backend: 'wasm',
        data,
        trainer: { maxSteps: f.steps, globalBatchSize: f.gbs, microBatchSize: f.gbs, saveInterval: f.steps, valCheckInterval: 0, logInterval: 1 },
        optim: { lr: 3e-3, minLr: 3e-4, warmupSteps: 2 },
      });
    const teacher = await loadModel(join(tmp, 'teacher'), { trainable: false });
    const valid = openSampleSource(data, 'valid', teacher.config.vocabSize);
    const evalOpts = { ...DEFAULT_KD_LOSS, seqLength: f.seq!, microBatchSize: 8, limitBatches: f.val_batches, chunkSize: 256 };
    const validKl = async (dir: string): Promise<number> => {
      const s = await loadModel(dir, { trainable: false });
      try {
        return (await evaluateOn(s, teacher, valid, evalOpts)).kdLoss!;
      } finally {
        s.dispose();
      }
    };
    const untrained = await validKl(join(tmp, 'student'));
    const runs: [string, { teacherPath?: string; teacherCache?: string }][] = [
      ['online (teacher loaded)', { teacherPath: join(tmp, 'teacher') }],
      ['cache full float32', { teacherCache: caches.find((c) => c.method === 'full' && c.dtype === 'float32')!.dir }],
      [`cache topk K=${f.top_k} float32`, { teacherCache: caches.find((c) => c.method.startsWith('topk') && c.dtype === 'float32')!.dir }],
      [`cache topk K=${f.top_k} uint8`, { teacherCache: caches.find((c) => c.method.startsWith('topk') && c.dtype === 'uint8')!.dir }],
      [`cache sample N=${f.samples} float32`, { teacherCache: caches.find((c) => c.method.startsWith('sample') && c.dtype === 'float32')!.dir }],
    ];
    const trains: TrainRow[] = [];
    for (const [label, t] of runs) {
      const t0 = performance.now();
      const r = await run(recipe(label.replace(/[^a-z0-9]+/gi, '-'), t), { log: null, progress: false });
      const seconds = (performance.now() - t0) / 1000;
      trains.push({ label, seconds, tokensPerS: tokens / seconds, validKl: await validKl(r.studentDir), finalLoss: r.steps[r.steps.length - 1].loss });
      say(`${label}: ${seconds.toFixed(1)} s, valid KL ${trains[trains.length - 1].validKl.toFixed(4)}`);
    }
    valid.close();
    teacher.dispose();

    const online = trains[0].seconds;
    const lines = [
      `## Teacher cache benchmark (${backend.chosen}, ${cpus()[0]?.model ?? 'cpu'}, ${cpus().length} cores shared)`,
      '',
      `Student ${'data/models/student.config.json'} (vocab 4096, hidden 64, 2 layers); teacher 2× wider, 2× deeper (hidden 128, 4 layers, random init, initializer_range 0.15);`,
      `Brown corpus, seq_length ${f.seq}, ${f.gbs} samples/step, ${f.steps} steps = ${tokens} tokens cached and trained.`,
      `The teacher's top-${f.top_k} hold ${(100 * meanTopK).toFixed(1)}% of its mass on average (the ghost bucket the rest).`,
      '',
      '| cache | value dtype | bytes / token | write (tokens/s, incl. teacher forward) |',
      '|---|---|---:|---:|',
      ...caches.map((c) => `| ${c.method} | ${c.dtype} | ${c.bytesPerToken.toFixed(1)} | ${c.writeTokensPerS.toFixed(0)} |`),
      '',
      `| run (${f.steps} steps) | wall s | tokens/s | speed-up vs online | final train loss | validation forward KL |`,
      '|---|---:|---:|---:|---:|---:|',
      `| untrained student | | | | | ${untrained.toFixed(4)} |`,
      ...trains.map(
        (t) =>
          `| ${t.label} | ${t.seconds.toFixed(1)} | ${t.tokensPerS.toFixed(0)} | ${(online / t.seconds).toFixed(2)}× | ${t.finalLoss.toFixed(4)} | ${t.validKl.toFixed(4)} |`,
      ),
    ];
    console.log(lines.join('\n'));
  } finally {
    if (f.keep) say(`kept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  },
);
