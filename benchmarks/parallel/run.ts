/**
 * Tokens/s of the parallel layouts on this machine, wasm backend: DP 1 vs DP 2 (teacher in each student worker),
 * and the teacher on a worker of its own vs shared. Models are built here (random Llama weights, larger than the
 * test fixtures so that compute, not IPC, dominates) and trained on the fixture Megatron dataset.
 *
 *   node --import tsx benchmarks/parallel/run.ts [--steps 12] [--warmup 2] [--shape S]
 *   node --import tsx benchmarks/parallel/run.ts --layouts dp1,dp2,tp2,pp2,cp2 [--shape S]
 *
 * --layouts measures model-parallel layouts (tpN, ppN, cpN, dpN, composable: tp2dp2) and each worker's peak
 * resident memory (every worker logs its own at the end; DP 1 runs in this process, measured first).
 *
 * Throughput counts the training tokens of the steps after the warm-up, over the wall time between the end of the
 * warm-up and the end of the last step (as seen by the launcher), so worker start-up is excluded.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { selectBackend } from '../../src/backend/select.ts';
import { initModelDir } from '../../src/cli/initCommand.ts';
import { distillationRecipe, type DistillationRecipe } from '../../src/recipe/config.ts';
import { withTeacherDevices } from '../../src/parallel/placement.ts';
import { run } from '../../pipelines/run.ts';
import { FIXTURES } from '../../test/helpers/fixtures.ts';
import { defaultDataPaths } from '../../src/data/defaults.ts';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const STEPS = arg('steps', 12);
// --shape S: the streaming benchmark's configuration S (vocab 8192, student 256 × 4, teacher 512 × 8, seq 256,
// batch 8) on the bundled Brown data, DP 1 and DP 2 only: big enough that compute, not messaging, dominates.
const SHAPE_S = process.argv.includes('--shape') && process.argv[process.argv.indexOf('--shape') + 1] === 'S';
const WARMUP = arg('warmup', 2);

async function makeModel(dir: string, over: Record<string, number>): Promise<string> {
  const base = JSON.parse(readFileSync(join(FIXTURES, 'llama-teacher', 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfgPath = join(dir, 'config.in.json');
  writeFileSync(cfgPath, JSON.stringify({ ...base, ...over, tie_word_embeddings: false }));
  const out = join(dir, 'model');
  await initModelDir(cfgPath, out, 1);
  return out;
}

interface Row {
  layout: string;
  processes: number;
  tokensPerS: number;
  lossLast: number;
  /** Peak resident memory of each worker process, MiB. */
  rssMiB: number[];
}

async function measure(layout: string, processes: number, recipe: DistillationRecipe): Promise<Row> {
  const ends: { at: number; tokens: number; loss: number }[] = [];
  const rss: number[] = [];
  const log = (line: string): void => {
    const m = /peak RSS (\d+) MiB/.exec(line);
    if (m) rss.push(Number(m[1]));
  };
  await run(recipe, { log, progress: false, onStep: (r) => ends.push({ at: performance.now(), tokens: r.tokens, loss: r.loss }) });
  if (processes === 1 && rss.length === 0) rss.push(Math.round(process.resourceUsage().maxRSS / 1024));
  const timed = ends.slice(WARMUP);
  const tokens = timed.slice(1).reduce((a, e) => a + e.tokens, 0);
  const seconds = (timed[timed.length - 1].at - timed[0].at) / 1000;
  return { layout, processes, tokensPerS: tokens / seconds, lossLast: ends[ends.length - 1].loss, rssMiB: rss };
}

/** "tp2pp2" → the parallel flags and the worker count. */
function parseLayout(name: string): { tpSize: number; ppSize: number; cpSize: number; devicesPerNode: number } {
  const get = (k: string): number => Number(new RegExp(`${k}(\\d+)`).exec(name)?.[1] ?? 1);
  const l = { tpSize: get('tp'), ppSize: get('pp'), cpSize: get('cp') };
  return { ...l, devicesPerNode: l.tpSize * l.ppSize * l.cpSize * get('dp') };
}

async function main(): Promise<void> {
  await selectBackend('cpu', { log: null });
  const dir = mkdtempSync(join(tmpdir(), 'bench-parallel-'));
  try {
    const s: { student: Record<string, number>; teacher: Record<string, number>; data: string; seq: number; gbs: number; mbs: number; label: string } = SHAPE_S
      ? {
          student: {
            hidden_size: 256,
            intermediate_size: 704,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            head_dim: 64,
            vocab_size: 8192,
            max_position_embeddings: 512,
          },
          teacher: {
            hidden_size: 512,
            intermediate_size: 1408,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            head_dim: 64,
            vocab_size: 8192,
            max_position_embeddings: 512,
          },
          data: defaultDataPaths(),
          seq: 256,
          gbs: 8,
          mbs: 4,
          label: 'S: student 256 × 4, teacher 512 × 8, vocab 8192, seq 256, gbs 8, mbs 4, Brown data',
        }
      : {
          student: { hidden_size: 128, intermediate_size: 344, num_hidden_layers: 2, num_attention_heads: 8, num_key_value_heads: 4 },
          teacher: { hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4, num_attention_heads: 16, num_key_value_heads: 8 },
          data: join(FIXTURES, 'megatron', 'small_text_document'),
          seq: 32,
          gbs: 4,
          mbs: 1,
          label: 'student 128 hidden × 2 layers, teacher 256 × 4, vocab 1000, seq 32, gbs 4, mbs 1',
        };
    const student = await makeModel(mkdtempSync(join(dir, 's-')), s.student);
    const teacher = await makeModel(mkdtempSync(join(dir, 't-')), s.teacher);
    const recipe = (name: string, devices: number, parallel: Partial<DistillationRecipe['parallel']> = {}): DistillationRecipe =>
      distillationRecipe({
        name,
        dir,
        studentPath: student,
        teacherPath: teacher,
        backend: 'wasm',
        data: { dataPaths: s.data, seqLength: s.seq, split: '1,0,0', seed: 7 },
        trainer: { maxSteps: STEPS, globalBatchSize: s.gbs, microBatchSize: s.mbs, saveInterval: 1000, valCheckInterval: 0, logInterval: 1 },
        optim: { lr: 1e-3, minLr: 1e-4, warmupSteps: 1 },
        parallel: { devicesPerNode: devices, ...parallel },
      });
    const rows: Row[] = [];
    const li = process.argv.indexOf('--layouts');
    if (li >= 0) {
      for (const name of process.argv[li + 1].split(',')) {
        const p = parseLayout(name);
        rows.push(await measure(name.toUpperCase().replace(/(\d+)/g, ' $1 ').trim(), p.devicesPerNode, recipe(name, p.devicesPerNode, p)));
      }
      report(rows, s.label);
      return;
    }
    rows.push(await measure('DP 1, teacher shared (one process)', 1, recipe('dp1', 1)));
    rows.push(await measure('DP 2, teacher shared (in each student)', 2, recipe('dp2', 2)));
    if (!SHAPE_S) {
      rows.push(await measure('DP 1, teacher on its own worker', 2, withTeacherDevices(recipe('dp1t', 1), 1)));
      rows.push(await measure('DP 2, teacher on its own worker', 3, withTeacherDevices(recipe('dp2t', 2), 1)));
    }
    report(rows, s.label);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(rows: Row[], label: string): void {
  const base = rows[0].tokensPerS;
  console.log(
    `\nmachine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} (shared)`,
  );
  console.log(`wasm backend; ${label}; ${STEPS} steps, first ${WARMUP} not timed\n`);
  console.log(`| layout | processes | tokens/s | vs ${rows[0].layout} | peak RSS per worker (MiB) | last loss |`);
  console.log('|---|---:|---:|---:|---|---:|');
  for (const r of rows)
    console.log(
      `| ${r.layout} | ${r.processes} | ${r.tokensPerS.toFixed(0)} | ${(r.tokensPerS / base).toFixed(2)}× | ${r.rssMiB.sort((a, b) => a - b).join(', ')} | ${r.lossLast.toFixed(4)} |`,
    );
}

await main();
