/**
 * Crash-anywhere check, the long version (the test suite runs a few points of it):
 *
 *   node --import tsx scripts/killResume.ts --points 24 [--seed 11] [--backend cpu|wasm] [--cache_share 0.25]
 *
 * Trains the fixture pair (8 steps, a checkpoint every step) and writes a teacher cache (8 parts) uninterrupted,
 * then again while SIGKILLing the process at seeded points (a time after start, after the n-th step, inside the
 * n-th student write, between student and checkpoint directory, inside the checkpoint directory, right after its
 * rename, inside the n-th cache part), rerunning the same command after each kill until it completes. After every
 * kill each step-* directory and each cache part must read whole; at the end the student must equal the
 * uninterrupted one and the cache parts must equal the uninterrupted ones byte for byte. Exits 1 on any problem.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFlags } from '../src/cli/flags.ts';
import { cacheChain, prng, referenceCache, referenceTrain, trainChain, type ChainReport } from '../test/reliability/killHarness.ts';

const { flags } = parseFlags(
  process.argv.slice(2),
  {
    points: { kind: 'int', help: 'kill points to land', default: 24, min: 1 },
    seed: { kind: 'int', help: 'seed of the kill points', default: 11 },
    backend: { kind: 'string', help: 'cpu or wasm', default: 'cpu', choices: ['cpu', 'wasm'] },
    cache_share: { kind: 'number', help: 'share of the points aimed at cache-teacher', default: 0.25 },
    keep: { kind: 'boolean', help: 'keep the temporary folder' },
  },
  'killResume',
);

const root = mkdtempSync(join(tmpdir(), 'kill-resume-'));
const started = Date.now();
const rng = prng(flags.seed!);
const backend = flags.backend!;
const wantCache = Math.round(flags.points! * flags.cache_share!);
const wantTrain = flags.points! - wantCache;
const say = (l: string): void => void process.stderr.write(l + '\n');

const reports: { what: string; r: ChainReport }[] = [];
try {
  say(`kill-resume: ${wantTrain} training + ${wantCache} cache kill points, seed ${flags.seed}, backend ${backend}, in ${root}`);
  const refStudent = await referenceTrain(root, backend);
  const refCache = await referenceCache(join(root, 'reference-cache'), backend);
  let landed = 0;
  for (let c = 0; landed < wantTrain; c++) {
    const r = await trainChain(root, `chain-${c}`, refStudent, rng, Math.min(6, wantTrain - landed), backend);
    landed += r.kills.length;
    reports.push({ what: `train chain ${c}`, r });
    say(
      `train chain ${c}: ${r.kills.map((k) => k.point).join('; ')} | missed ${r.missed.length} | attempts ${r.attempts} | max |Δw| ${r.maxDiff} | metrics records lost ${r.metricsGaps.length} | problems ${r.problems.length}`,
    );
    if (r.kills.length === 0 && r.problems.length > 0) break;
  }
  landed = 0;
  for (let c = 0; landed < wantCache; c++) {
    const r = await cacheChain(join(root, `cache-${c}`), refCache, rng, Math.min(4, wantCache - landed), backend);
    landed += r.kills.length;
    reports.push({ what: `cache chain ${c}`, r });
    say(
      `cache chain ${c}: ${r.kills.map((k) => k.point).join('; ')} | missed ${r.missed.length} | attempts ${r.attempts} | parts identical ${r.maxDiff === 0} | problems ${r.problems.length}`,
    );
    if (r.kills.length === 0 && r.problems.length > 0) break;
  }
} finally {
  if (!flags.keep) rmSync(root, { recursive: true, force: true });
}

const kills = reports.reduce((n, x) => n + x.r.kills.length, 0);
const problems = reports.flatMap((x) => x.r.problems.map((p) => `${x.what}: ${p}`));
const temporaries = reports.reduce((n, x) => n + x.r.kills.reduce((m, k) => m + k.temporaries, 0), 0);
const metricsGaps = reports.reduce((n, x) => n + x.r.metricsGaps.length, 0);
const maxDiff = Math.max(0, ...reports.filter((x) => x.what.startsWith('train')).map((x) => x.r.maxDiff));
for (const p of problems) say(`PROBLEM ${p}`);
console.log(
  JSON.stringify({
    kill_points: kills,
    train_kills: reports.filter((x) => x.what.startsWith('train')).reduce((n, x) => n + x.r.kills.length, 0),
    cache_kills: reports.filter((x) => x.what.startsWith('cache')).reduce((n, x) => n + x.r.kills.length, 0),
    missed_points: reports.reduce((n, x) => n + x.r.missed.length, 0),
    attempts: reports.reduce((n, x) => n + x.r.attempts, 0),
    max_abs_weight_diff: maxDiff,
    temporaries_seen_after_kills: temporaries,
    metrics_records_lost: metricsGaps,
    problems: problems.length,
    seconds: Math.round((Date.now() - started) / 1000),
  }),
);
process.exit(problems.length === 0 && kills >= flags.points! ? 0 : 1);
