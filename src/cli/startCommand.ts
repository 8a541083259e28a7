/**
 * `npm start`: the main job on the embedded default, and the seed's claim measured. It distils the bundled student
 * from the bundled teacher on the bundled Brown corpus and, at the same time on the other core, trains the same
 * student (same initial weights, data order, steps and schedule) on plain next-token CE. Then it evaluates both
 * and the teacher on the held-out split and prints the comparison, with an HTML report of the curves.
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlags, usage } from './flags.ts';
import { BACKEND_CHOICES, selectBackend, type BackendChoice } from '../backend/select.ts';
import { initModelDir } from './initCommand.ts';
import { loadModel } from '../checkpoint/load.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { openSampleSource } from '../train/dataSources.ts';
import { DEFAULT_KD_LOSS } from '../losses/types.ts';
import { readMetrics } from '../logging/metricsLog.ts';
import { ProgressBar } from '../logging/progress.ts';
import { writeReport } from '../logging/report.ts';
import { writeChartPngs } from '../logging/plot.ts';
import { runCharts } from '../logging/runCharts.ts';
import { DistillError } from '../errors.ts';
import { evaluateOn, type EvaluationResult } from '../../pipelines/evaluate.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BUNDLED_TEACHER = join(ROOT, 'data/teacher');
export const BUNDLED_STUDENT_CONFIG = join(ROOT, 'data/models/student.config.json');

const FLAGS = {
  max_steps: { kind: 'int', help: 'optimizer steps of each run', default: 300, min: 1 },
  seq_length: { kind: 'int', help: 'tokens per sample', default: 128, min: 8 },
  gbs: { kind: 'int', help: 'samples per step', default: 16, min: 1 },
  lr: { kind: 'number', help: 'peak learning rate (the tiny student learns fast)', default: 3e-3 },
  kd_ratio: { kind: 'number', help: 'α in (1 − α)·CE + α·KD for the distilled run', default: 1 },
  val_batches: { kind: 'int', help: 'held-out micro-batches for the final comparison', default: 32, min: 1 },
  log_dir: { kind: 'string', help: 'where the runs are written', default: 'runs/start' },
  backend: { kind: 'string', help: 'compute backend of both runs', default: 'auto', choices: BACKEND_CHOICES },
  help: { kind: 'boolean', help: 'print this help' },
} as const;

interface Evaluated {
  label: string;
  r: EvaluationResult;
}

export async function startMain(argv: string[]): Promise<void> {
  const { flags: f } = parseFlags(argv, FLAGS, 'distill start');
  if (f.help)
    return void console.log(
      usage(
        'distill start',
        'Distil the bundled student and compare it with plain CE training (what `npm start` runs; there, flags go after `npm start --`).',
        FLAGS,
      ),
    );
  if (!existsSync(join(BUNDLED_TEACHER, 'model.safetensors'))) {
    throw new DistillError(`the bundled teacher is missing from ${BUNDLED_TEACHER}; it is part of the repository (see README: "The bundled teacher")`);
  }
  const logDir = resolve(f.log_dir!);
  const steps = f.max_steps!;
  const init = join(logDir, 'student-init');
  const report = await selectBackend(f.backend as BackendChoice);
  console.error(
    `npm start: distilling ${BUNDLED_STUDENT_CONFIG} from ${BUNDLED_TEACHER} on the Brown corpus, ${steps} steps of ${f.gbs} × ${f.seq_length} tokens;`,
  );
  console.error('           the CE-only baseline trains the same student at the same time on the other core.');
  for (const run of ['kd', 'ce']) rmSync(join(logDir, run), { recursive: true, force: true });
  await initModelDir(BUNDLED_STUDENT_CONFIG, init, 1234);

  const common = [
    '--student_path',
    init,
    '--log_dir',
    logDir,
    '--seq_length',
    String(f.seq_length),
    '--gbs',
    String(f.gbs),
    '--mbs',
    String(f.gbs),
    '--max_steps',
    String(steps),
    '--lr',
    String(f.lr),
    '--min_lr',
    String(f.lr! / 10),
    '--warmup_steps',
    String(Math.min(20, Math.floor(steps / 10))),
    '--split',
    '99,1,0',
    '--val_check_interval',
    String(Math.max(1, Math.floor(steps / 5))),
    '--limit_val_batches',
    '4',
    '--log_interval',
    '1',
    '--save_interval',
    String(steps),
    '--backend',
    report.chosen,
  ];
  const t0 = performance.now();
  await Promise.all([
    child(['run', '--name', 'kd', '--teacher_path', BUNDLED_TEACHER, '--kd_ratio', String(f.kd_ratio), ...common]),
    child(['pretrain', '--name', 'ce', ...common]),
    progress(logDir, steps),
  ]);
  const trainSeconds = (performance.now() - t0) / 1000;

  // The comparison: the same held-out samples for all three models.
  const teacher = await loadModel(BUNDLED_TEACHER, { trainable: false });
  const valid = openSampleSource({ dataPaths: defaultDataPaths(), seqLength: f.seq_length!, split: '99,1,0', seed: 1234 }, 'valid', teacher.config.vocabSize);
  const opts = { ...DEFAULT_KD_LOSS, seqLength: f.seq_length!, microBatchSize: 8, limitBatches: f.val_batches, chunkSize: 256 };
  const results: Evaluated[] = [];
  for (const [label, dir] of [
    ['distilled student (KD)', join(logDir, 'kd/student')],
    ['same student, plain CE', join(logDir, 'ce/student')],
  ]) {
    const student = await loadModel(dir, { trainable: false });
    results.push({ label, r: await evaluateOn(student, teacher, valid, opts) });
    student.dispose();
  }
  const teacherCe = results[0].r.teacherCe!;
  valid.close();
  teacher.dispose();

  const reportPath = writeReport(
    logDir,
    [
      { label: 'distilled student (KD)', records: readMetrics(join(logDir, 'kd')) },
      { label: 'same student, plain CE', records: readMetrics(join(logDir, 'ce')) },
    ],
    { teacher: { label: 'teacher (validation CE)', loss: teacherCe } },
  );
  const pngs = writeChartPngs(
    logDir,
    runCharts(
      [
        { label: 'distilled student (KD)', records: readMetrics(join(logDir, 'kd')) },
        { label: 'same student, plain CE', records: readMetrics(join(logDir, 'ce')) },
      ],
      { teacher: { label: 'teacher (validation CE)', loss: teacherCe } },
    ),
  );
  console.log(summary(results, teacherCe, steps, trainSeconds, report.chosen));
  console.log(`\nstudent: ${join(logDir, 'kd/student')}   (loads with transformers: AutoModelForCausalLM.from_pretrained)`);
  console.log(`report:  ${reportPath}\ncharts:  ${pngs.join(', ')}`);
}

function summary(results: Evaluated[], teacherCe: number, steps: number, seconds: number, backend: string): string {
  const [kd, ce] = results;
  const rows = [
    ['model', 'valid CE (nats/token)', 'perplexity', 'KL to teacher'],
    ['teacher (bundled)', teacherCe.toFixed(4), Math.exp(teacherCe).toFixed(1), '0'],
    ...results.map((e) => [e.label, e.r.studentCe.toFixed(4), Math.exp(e.r.studentCe).toFixed(1), e.r.kdLoss!.toFixed(4)]),
  ];
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]): string => r.map((x, c) => (c === 0 ? x.padEnd(w[c]) : x.padStart(w[c]))).join('   ');
  const gain = ce.r.studentCe - kd.r.studentCe;
  const verdict =
    gain > 0
      ? `Distillation wins: after the same ${steps} steps the distilled student's validation CE is ${gain.toFixed(4)} nats/token lower than plain CE training's (${((1 - Math.exp(-gain)) * 100).toFixed(1)}% lower perplexity).`
      : `Distillation did not win this time: the distilled student's validation CE is ${(-gain).toFixed(4)} nats/token higher than plain CE training's after ${steps} steps.`;
  return [
    '',
    `Validation on ${kd.r.tokens} held-out tokens of the Brown corpus (${backend}, trained ${seconds.toFixed(0)} s):`,
    '',
    line(rows[0]),
    ...rows.slice(1).map(line),
    '',
    verdict,
  ].join('\n');
}

/** Runs a `distill` subcommand in its own process (one core each: wasm runs one thread per process). */
function child(args: string[]): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
    });
    let err = '';
    p.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    p.on('exit', (code) =>
      code === 0 ? resolvePromise() : reject(new DistillError(`distill ${args[0]} ${args[2]} failed (exit ${code}):\n${err.slice(-4000)}`)),
    );
  });
}

/** One progress bar over both runs, read from their metrics.jsonl. */
async function progress(logDir: string, steps: number): Promise<void> {
  const bar = new ProgressBar({ total: 2 * steps, label: 'kd + ce' });
  const done = (run: string): { n: number; loss?: number; tps: number } => {
    try {
      const recs = readMetrics(join(logDir, run)).filter((r) => r.split !== 'valid');
      const last = recs[recs.length - 1] as { loss?: number; tokens_per_s?: number } | undefined;
      return { n: recs.length, loss: last?.loss, tps: last?.tokens_per_s ?? 0 };
    } catch {
      return { n: 0, tps: 0 };
    }
  };
  for (;;) {
    const kd = done('kd');
    const ce = done('ce');
    bar.update(kd.n + ce.n, { tokensPerS: kd.tps + ce.tps, note: `kd loss ${kd.loss?.toFixed(3) ?? '-'}  ce loss ${ce.loss?.toFixed(3) ?? '-'}` });
    if (kd.n >= steps && ce.n >= steps) break;
    await new Promise((r) => setTimeout(r, 500));
    if (existsSync(join(logDir, 'kd/student')) && existsSync(join(logDir, 'ce/student'))) break;
  }
  bar.finish();
}
