/**
 * The CLI as a user runs it: `distill run` (NeMo's flags) trains and prints its JSON line (run again once finished,
 * it prints the same line), `distill evaluate --json` ends with the documented JSON, bad flags fail fast with the arithmetic or the flag's name in the message.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, fixture } from '../helpers/fixtures.ts';

function distill(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args], {
    encoding: 'utf8',
    cwd: ROOT,
    env: { ...process.env, DISTILL_NO_PROGRESS: '1' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const data = fixture('megatron', 'small_text_document');

test('distill run with NeMo flags trains the fixture pair and writes a student; evaluate --json reports on it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-cli-'));
  try {
    const runArgs = [
      'run',
      '--name',
      'cli',
      '--log_dir',
      dir,
      '--student_path',
      fixture('llama-student'),
      '--teacher_path',
      fixture('llama-teacher'),
      '--data_paths',
      data,
      '--seq_length',
      '16',
      '--gbs',
      '2',
      '--mbs',
      '1',
      '--max_steps',
      '3',
      '--lr',
      '1e-3',
      '--warmup_steps',
      '1',
      '--min_lr',
      '1e-4',
      '--split',
      '80,20,0',
      '--val_check_interval',
      '3',
      '--limit_val_batches',
      '2',
      '--backend',
      'cpu',
    ];
    const r = distill(runArgs);
    assert.equal(r.code, 0, r.stderr);
    type Summary = { steps: number; student: string; loss: number; resumed_from_step: number };
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Summary;
    assert.equal(out.steps, 3);
    assert.ok(existsSync(join(out.student, 'model.safetensors')));
    // The same command again: the run is finished, nothing trains, and it still ends with its summary (issue 23, 7).
    const again = distill(runArgs);
    assert.equal(again.code, 0, again.stderr);
    const last = again.stdout.trim().split('\n').pop()!;
    assert.ok(last.startsWith('{'), `a finished run prints its JSON summary last:\n${again.stdout}`);
    assert.deepEqual(JSON.parse(last) as Summary, { ...out, resumed_from_step: 3 });
    const e = distill([
      'evaluate',
      '--student_path',
      out.student,
      '--teacher_path',
      fixture('llama-teacher'),
      '--data_paths',
      data,
      '--seq_length',
      '16',
      '--json',
      '--backend',
      'cpu',
    ]);
    assert.equal(e.code, 0, e.stderr);
    const m = JSON.parse(e.stdout.trim().split('\n').pop()!) as { kd_loss: number; student_ce: number; teacher_ce: number; tokens: number };
    assert.ok(m.kd_loss > 0 && m.student_ce > 0 && m.teacher_ce > 0, JSON.stringify(m));
    assert.ok(m.tokens >= 16, `tokens ${m.tokens}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad flags fail before anything loads, naming the flag and the arithmetic', () => {
  const base = [
    'run',
    '--name',
    'x',
    '--student_path',
    fixture('llama-student'),
    '--teacher_path',
    fixture('llama-teacher'),
    '--backend',
    'cpu',
    '--log_dir',
    tmpdir(),
  ];
  const cases: [string[], RegExp][] = [
    [['--gbs', '3', '--mbs', '2'], /--gbs 3 must be a multiple of --mbs 2/],
    [['--seq_length', '-4'], /--seq_length -4 is below its minimum/],
    [['--lr', 'abc'], /--lr abc is not a number/],
    [['--kd_loss', 'l2'], /--kd_loss l2 is not one of/],
    [['--tp_size', '3'], /tp × pp × cp/],
    [['--warmup-steps', '1', '--bogus', '2'], /unknown flag --bogus/],
  ];
  for (const [extra, want] of cases) {
    const r = distill([...base, ...extra]);
    assert.equal(r.code, 2, `${extra.join(' ')}: exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, want);
  }
});
