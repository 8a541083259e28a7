/**
 * The CLI's help and flags as a user meets them (issue 23, items 6 and 9): every command answers --help, enum flags
 * list their choices, a boolean that is on by default turns off with --no-FLAG, `pretrain` neither lists nor accepts
 * the teacher and KD flags, and `evaluate --help` shows only what evaluate reads. The commands run in this process
 * (their `main` functions, which src/cli/main.ts only dispatches to), printing into a captured console.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.ts';
import { parseFlags, usage } from '../../src/cli/flags.ts';
import { DISTILLATION_ONLY_FLAGS, RUN_FLAGS, recipeFromFlags } from '../../src/cli/runFlags.ts';
import { dataMain } from '../../src/cli/dataDump.ts';
import { pretrainMain, runMain } from '../../src/cli/runCommand.ts';
import { evaluateMain } from '../../src/cli/evaluateCommand.ts';
import { cacheTeacherMain } from '../../src/cli/cacheTeacherCommand.ts';
import { ConfigError } from '../../src/errors.ts';
import { BACKEND_CHOICES } from '../../src/backend/select.ts';
import { KD_LOSS_KINDS } from '../../src/losses/types.ts';
import { VALUE_DTYPES } from '../../src/cache/quantize.ts';

/** What `main(argv)` printed with console.log. */
async function printed(main: (argv: string[]) => Promise<void>, argv: string[]): Promise<string> {
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]): void => void lines.push(a.map(String).join(' '));
  try {
    await main(argv);
  } finally {
    console.log = log;
  }
  return lines.join('\n');
}

/** The flag names a usage text lists, in order. */
const listedFlags = (help: string): string[] => [...help.matchAll(/^ {2}--(\w+)/gm)].map((m) => m[1]);

test('distill data --help prints the subcommands instead of failing', async () => {
  const help = await printed(dataMain, ['--help']);
  assert.match(help, /^usage: distill data <subcommand>/);
  assert.match(help, /dump .*--data_paths/);
  // `distill data` with nothing still fails, but shows the same help.
  await assert.rejects(dataMain([]), (e: unknown) => e instanceof ConfigError && /unknown subcommand \(none\)[\s\S]*dump/.test(e.message));
});

test('enum flags list their choices in --help (run, evaluate, cache-teacher)', async () => {
  const run = await printed(runMain, ['--help']);
  const line = (help: string, flag: string): string => help.split('\n').find((l) => l.startsWith(`  --${flag} `)) ?? assert.fail(`--${flag} not in help`);
  assert.ok(line(run, 'kd_loss').includes(`{${KD_LOSS_KINDS.join('|')}}`), line(run, 'kd_loss'));
  assert.ok(line(run, 'backend').includes(`{${BACKEND_CHOICES.join('|')}}`), line(run, 'backend'));
  assert.match(line(run, 'nan_policy'), /\{skip\|stop\}/);
  assert.match(line(run, 'precision'), /\{32\|bf16-mixed\|16-mixed\}/);
  const cache = await printed(cacheTeacherMain, ['--help']);
  assert.ok(line(cache, 'value_dtype').includes(`{${VALUE_DTYPES.join('|')}}`), line(cache, 'value_dtype'));
  assert.match(line(cache, 'method'), /\{topk\|sample\|full\}/);
  // A boolean that is on by default says how to turn it off.
  assert.match(line(run, 'temperature_scaling'), /default on; --no-temperature_scaling turns it off/);
});

test('--no-temperature_scaling turns the τ² factor off; =false and =true work too; other values are refused', () => {
  const base = ['--name', 'n', '--student_path', 's', '--teacher_path', 't'];
  const scaling = (extra: string[]): boolean => recipeFromFlags('distill', [...base, ...extra], () => 'data').loss.scaleByTemperatureSquared;
  assert.equal(scaling([]), true, 'on by default (NeMo / Hinton)');
  assert.equal(scaling(['--no-temperature_scaling']), false);
  assert.equal(scaling(['--no-temperature-scaling']), false, 'the dashed spelling, as for every flag');
  assert.equal(scaling(['--temperature_scaling=false']), false);
  assert.equal(scaling(['--temperature_scaling', 'false']), false);
  assert.equal(scaling(['--no-temperature_scaling', '--temperature_scaling']), true, 'the last one wins');
  assert.throws(() => scaling(['--temperature_scaling=no']), /--temperature_scaling=no: give true or false/);
  assert.throws(() => scaling(['--no-temperature_scaling=false']), /takes no value/);
  // --no- applies to booleans only: --no-lr is an unknown flag, not "lr off".
  assert.throws(() => parseFlags(['--no-lr'], RUN_FLAGS, 'distill run'), /unknown flag --no-lr/);
  assert.throws(() => parseFlags(['--constructor', '1'], RUN_FLAGS, 'distill run'), /unknown flag --constructor/);
});

test('pretrain --help lists no teacher or KD flag, and pretrain refuses them', async () => {
  const help = await printed(pretrainMain, ['--help']);
  assert.match(help, /^usage: distill pretrain/);
  const listed = listedFlags(help);
  for (const k of DISTILLATION_ONLY_FLAGS) assert.ok(!listed.includes(k), `pretrain --help lists --${k}`);
  for (const k of ['student_path', 'data_paths', 'seq_length', 'max_steps', 'lr', 'backend']) assert.ok(listed.includes(k), `pretrain --help lacks --${k}`);
  const run = listedFlags(await printed(runMain, ['--help']));
  for (const k of ['teacher_path', 'teacher_cache', 'kd_loss', 'kd_ratio', 'temperature']) assert.ok(run.includes(k), `run --help lacks --${k}`);

  const argv = ['--name', 'ce', '--student_path', 's', '--log_dir', 'runs'];
  await assert.rejects(
    pretrainMain([...argv, '--teacher_path', 't']),
    (e: unknown) =>
      e instanceof ConfigError &&
      /distill pretrain trains on next-token cross-entropy alone, with no teacher: --teacher_path is a distillation flag/.test(e.message),
  );
  await assert.rejects(
    pretrainMain([...argv, '--kd_loss', 'jsd', '--temperature=2', '--no-temperature_scaling']),
    (e: unknown) => e instanceof ConfigError && /--kd_loss, --temperature, --temperature_scaling are distillation flags/.test(e.message),
  );
});

test('evaluate --help lists only what evaluate reads, with --split and --eval_split', async () => {
  const help = await printed(evaluateMain, ['--help']);
  const listed = listedFlags(help);
  assert.deepEqual(listed, [
    'student_path',
    'teacher_path',
    'data_paths',
    'seq_length',
    'split',
    'eval_split',
    'seed',
    'mbs',
    'kd_loss',
    'temperature',
    'jsd_beta',
    'skew_lambda',
    'loss_chunk',
    'backend',
    'json',
    'help',
  ]);
  assert.doesNotMatch(help, /gradient accumulation|optimizer|learning rate/i);
  assert.match(help, /--eval_split .*\{train\|valid\|test\}/);
});

test('usage: choices and defaults, no "(default false)" on switches', () => {
  const text = usage('x', 'sum', {
    mode: { kind: 'string', help: 'the mode', default: 'a', choices: ['a', 'b'] },
    quiet: { kind: 'boolean', help: 'say less' },
  });
  assert.match(text, /--mode {5}the mode \{a\|b\} \(default a\)/);
  assert.match(text, /--quiet {4}say less$/m);
});

test('distill start --help shows the usage of distill start (through src/cli/main.ts)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'start', '--help'], { encoding: 'utf8', cwd: ROOT });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^usage: distill start \[flags\]/);
  assert.doesNotMatch(r.stdout, /usage: npm start/);
  assert.match(r.stdout, /--backend .*\{auto\|/);
});

test('--overlap_grad_reduce is on unless --no-overlap_grad_reduce, and reaches the recipe', () => {
  const base = ['--name', 'n', '--student_path', 's', '--teacher_path', 't'];
  const overlap = (extra: string[]): boolean | undefined => recipeFromFlags('distill', [...base, ...extra], () => 'data').parallel.overlapGradReduce;
  assert.equal(overlap([]), true);
  assert.equal(overlap(['--no-overlap_grad_reduce']), false);
  assert.equal(overlap(['--overlap_grad_reduce']), true);
});

test('--recompute_granularity selective|full and --recompute_method / --recompute_num_layers reach the recipe; absent, nothing is recomputed; other values are refused', () => {
  const base = ['--name', 'n', '--student_path', 's', '--teacher_path', 't'];
  const trainer = (extra: string[]) => recipeFromFlags('distill', [...base, ...extra], () => 'data').trainer;
  assert.equal(trainer([]).recomputeGranularity, null);
  assert.equal(trainer(['--recompute_granularity', 'selective']).recomputeGranularity, 'selective');
  assert.equal(trainer(['--recompute_granularity', 'full']).recomputeGranularity, 'full');
  assert.deepEqual(trainer(['--recompute_granularity', 'full']).recomputeLayers, { method: 'uniform', numLayers: 1 });
  assert.deepEqual(trainer(['--recompute_granularity', 'full', '--recompute_method', 'block', '--recompute_num_layers', '3']).recomputeLayers, {
    method: 'block',
    numLayers: 3,
  });
  assert.throws(() => trainer(['--recompute_granularity', 'everything']), /--recompute_granularity everything is not one of selective, full/);
  assert.throws(() => trainer(['--recompute_method', 'random']), /--recompute_method random is not one of uniform, block/);
  assert.throws(() => trainer(['--recompute_num_layers', '0']), /--recompute_num_layers/);
});
