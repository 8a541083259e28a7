/**
 * Bad input, fuzzed (configuration): config.json (fields missing, mistyped, absurd such as a vocabulary of 2^40;
 * bytes flipped), tokenizer.json (keys mutated, bytes flipped) and `distill run` flags (negative sizes, --mbs not
 * dividing --gbs, layouts that do not divide; parse + validate only, nothing trains). Every case succeeds or
 * throws a DistillError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModelConfig } from '../../src/checkpoint/load.ts';
import { countParams, parseModelConfig } from '../../src/model/config.ts';
import { loadTokenizer } from '../../src/data/tokenizer.ts';
import { recipeFromFlags, RUN_FLAGS } from '../../src/cli/runFlags.ts';
import { validateRecipe } from '../../src/recipe/validate.ts';
import { fixture } from '../helpers/fixtures.ts';
import { fuzz, mutateBytes, mutateJson, pick, randInt, type FuzzReport } from './fuzz.ts';

const root = mkdtempSync(join(tmpdir(), 'fuzz-config-'));
const reports: Record<string, FuzzReport> = {};
const check = (name: string, r: FuzzReport): void => {
  reports[name] = r;
  assert.deepEqual(r.failures, [], r.failures.join('\n\n'));
};
test.after(() => {
  rmSync(root, { recursive: true, force: true });
  const total = Object.values(reports).reduce((n, r) => n + r.cases, 0);
  process.stdout.write(
    `# fuzz (config): ${total} cases: ${Object.entries(reports)
      .map(([k, r]) => `${k} ${r.cases} (${r.ok} ok, ${r.refused} refused)`)
      .join('; ')}\n`,
  );
});

test('fuzz: config.json fields and bytes', async () => {
  const text = readFileSync(fixture('llama-teacher', 'config.json'), 'utf8');
  const gpt2 = JSON.parse(readFileSync(fixture('gpt2-tiny', 'config.json'), 'utf8')) as Record<string, unknown>;
  const base = [JSON.parse(text) as Record<string, unknown>, gpt2];
  const dir = join(root, 'cfg');
  mkdirSync(dir);
  check(
    'config.json',
    await fuzz('config.json', 5, 2000, (rng) => {
      if (rng() < 0.3) {
        writeFileSync(join(dir, 'config.json'), mutateBytes(Buffer.from(text), rng, text.length));
        readModelConfig(dir);
        return;
      }
      let c = pick(rng, base);
      for (let k = 1 + randInt(rng, 3); k > 0; k--) c = mutateJson(c, rng);
      const parsed = parseModelConfig(c, 'config.json');
      // What passes must be bounded: its parameter count is a finite number that the parser already capped.
      const p = countParams(parsed);
      if (!Number.isFinite(p) || p <= 0) throw new Error(`accepted a config of ${p} parameters`);
    }),
  );
});

test('fuzz: tokenizer.json keys and bytes', async () => {
  const text = readFileSync(fixture('tokenizer.json'), 'utf8');
  const json = JSON.parse(text) as Record<string, unknown>;
  const path = join(root, 'tokenizer.json');
  check(
    'tokenizer.json',
    await fuzz(
      'tokenizer.json',
      6,
      150,
      (rng) => {
        if (rng() < 0.4) writeFileSync(path, mutateBytes(Buffer.from(text), rng, 400));
        else {
          let j = json;
          for (let k = 1 + randInt(rng, 2); k > 0; k--) j = mutateJson(j, rng);
          writeFileSync(path, JSON.stringify(j));
        }
        const tok = loadTokenizer(path);
        const ids = tok.encode('The quick brown fox, 1963.');
        tok.decode(ids);
      },
      5000,
    ),
  );
});

const SIZE_VALUES = ['-4', '-1', '0', '1', '2', '3', '4', '7', '16', '1e3', '2.5', 'abc', '', '9007199254740993', '1e308', 'NaN', 'Infinity'];
const SIZE_FLAGS = [
  'seq_length',
  'max_steps',
  'gbs',
  'mbs',
  'val_check_interval',
  'limit_val_batches',
  'log_interval',
  'save_interval',
  'in_flight',
  'warmup_steps',
  'loss_chunk',
  'tp_size',
  'pp_size',
  'cp_size',
  'devices',
  'num_nodes',
  'teacher_devices',
];
const NUMBER_FLAGS = [
  'lr',
  'min_lr',
  'adam_beta1',
  'adam_beta2',
  'adam_eps',
  'weight_decay',
  'clip_grad',
  'temperature',
  'kd_ratio',
  'jsd_beta',
  'skew_lambda',
];

test('fuzz: distill run flags (parse and validate only)', async () => {
  const names = Object.keys(RUN_FLAGS);
  check(
    'run flags',
    await fuzz('run flags', 7, 3000, (rng) => {
      const argv = ['--name', rng() < 0.05 ? pick(rng, ['../x', '.', 'a/b', '']) : 'fz', '--student_path', 's', '--teacher_path', 't'];
      for (let k = randInt(rng, 6); k >= 0; k--) {
        const r = rng();
        if (r < 0.45) argv.push(`--${pick(rng, SIZE_FLAGS)}`, pick(rng, SIZE_VALUES));
        else if (r < 0.75) argv.push(`--${pick(rng, NUMBER_FLAGS)}`, pick(rng, [...SIZE_VALUES, '0.5', '1', '-0.1', '0.999', '3e-4']));
        else if (r < 0.85)
          argv.push(
            `--${pick(rng, ['split', 'kd_loss', 'nan_policy', 'backend', 'data_paths'])}`,
            pick(rng, ['80,20,0', '1,1', '-1,2,0', '0,0,0', 'a,b,c', 'jsd', 'l2', 'stop', 'skip', 'gpu', 'cpu', '']),
          );
        else if (r < 0.95) argv.push(`--${pick(rng, names)}`);
        else argv.push(pick(rng, ['--bogus', '--gbs=', '--mbs=2=3', '-x', '--']));
      }
      validateRecipe(recipeFromFlags(rng() < 0.2 ? 'pretrain' : 'distill', argv, () => 'data'));
    }),
  );
});
