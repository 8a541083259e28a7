/**
 * `distill evaluate` as a user runs it (issue 23, items 2 and 9): on data shorter than one sample it says how many
 * tokens the data has and how many a sample needs (not "sample index NaN"); --split / --eval_split pick the part of
 * the data that is read; the result is a sentence, or with --json one JSON line and nothing else.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, fixture } from '../helpers/fixtures.ts';
import { evaluateMain } from '../../src/cli/evaluateCommand.ts';
import { ConfigError } from '../../src/errors.ts';

const data = fixture('megatron', 'small_text_document');
const student = fixture('llama-student');

/** What `evaluateMain(argv)` printed with console.log. */
async function evaluate(argv: string[]): Promise<string[]> {
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]): void => void lines.push(a.map(String).join(' '));
  try {
    await evaluateMain([...argv, '--backend', 'cpu']);
  } finally {
    console.log = log;
  }
  return lines;
}

test('distill evaluate at its default --seq_length on the small fixture data: tokens held and needed, exit 2', () => {
  // The case as the user hit it: the default --seq_length 2048 against 414 tokens.
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'evaluate', '--student_path', student, '--data_paths', data, '--backend', 'cpu'],
    { encoding: 'utf8', cwd: ROOT, env: { ...process.env, DISTILL_NO_PROGRESS: '1' } },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.doesNotMatch(r.stderr, /NaN|readBatches/);
  assert.match(
    r.stderr,
    /no sample of --seq_length 2048 \+ 1 = 2049 tokens in the data: .*small_text_document holds 414 tokens in 20 documents\. Use --seq_length 413 or less/,
  );
  assert.equal(r.stdout, '');
});

test('evaluate: a part of --split without documents is named with its split', async () => {
  await assert.rejects(
    evaluate(['--student_path', student, '--data_paths', data, '--seq_length', '16', '--split', '99,1,0', '--eval_split', 'test']),
    (e: unknown) =>
      e instanceof ConfigError &&
      /in the test split \(--split 99,1,0\): .*holds 0 tokens in 0 documents\. Give it more data, or a larger test share of --split/.test(e.message),
  );
});

test('evaluate: --split/--eval_split choose the documents; a sentence by default, one JSON line with --json', async () => {
  const common = ['--student_path', student, '--data_paths', data, '--seq_length', '16', '--mbs', '2'];
  const all = await evaluate([...common, '--json']);
  assert.equal(all.length, 1, 'with --json, stdout is the JSON line alone');
  const whole = JSON.parse(all[0]) as { kd_loss: number | null; student_ce: number; teacher_ce: number | null; tokens: number };
  assert.equal(whole.kd_loss, null);
  assert.equal(whole.teacher_ce, null);
  // 414 tokens cut into windows of 17 overlapping by one: 25 samples; 12 micro-batches of 2 read 24 × 16 positions.
  assert.equal(whole.tokens, 24 * 16);
  const held = JSON.parse((await evaluate([...common, '--split', '80,20,0', '--json']))[0]) as typeof whole;
  const train = JSON.parse((await evaluate([...common, '--split', '80,20,0', '--eval_split', 'train', '--json']))[0]) as typeof whole;
  assert.ok(
    held.tokens > 0 && train.tokens > 0 && held.tokens + train.tokens < whole.tokens,
    `valid ${held.tokens} + train ${train.tokens} within ${whole.tokens}`,
  );
  assert.ok(train.tokens > 3 * held.tokens, 'the train part is the larger one');
  assert.notEqual(held.student_ce, train.student_ce);
  // Fewer samples than --mbs (3 windows of 129 in 414 tokens): each read once, not a batch of 8 repeating them.
  const few = JSON.parse((await evaluate(['--student_path', student, '--data_paths', data, '--seq_length', '128', '--mbs', '8', '--json']))[0]) as typeof whole;
  assert.equal(few.tokens, 3 * 128);
  const sentence = await evaluate(common);
  assert.equal(sentence.length, 1);
  assert.match(sentence[0], new RegExp(`^student CE ${whole.student_ce.toFixed(4)} {2}over ${whole.tokens} tokens$`));
});
