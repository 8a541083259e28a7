/**
 * Progress bar: redraw throttling and '\r' on a TTY, plain periodic lines otherwise, rate and ETA
 * measured from the first update (so resumed runs get an honest ETA).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDuration, ProgressBar, type ProgressStream } from '../../src/logging/progress.ts';

function sink(isTTY: boolean): ProgressStream & { out: string[] } {
  const out: string[] = [];
  return { out, isTTY, columns: 120, write: (s: string) => (out.push(s), true) };
}

test('formatDuration', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(65), '1:05');
  assert.equal(formatDuration(3723), '1:02:03');
  assert.equal(formatDuration(NaN), '?');
});

test('TTY: redraws in place with \\r, at most every 250 ms', () => {
  let clock = 0;
  const s = sink(true);
  const bar = new ProgressBar({ total: 1000, label: 'train', stream: s, now: () => clock });
  for (let step = 1; step <= 1000; step++) {
    clock += 10; // 100 steps per second, 10 s in all
    bar.update(step, { loss: 3 - step / 1000, tokensPerS: 12_345 });
  }
  bar.finish();
  const draws = s.out.filter((w) => w.startsWith('\r'));
  assert.ok(draws.length >= 38 && draws.length <= 42, `~4 redraws per second over 10 s, got ${draws.length}`);
  assert.ok(
    s.out.every((w) => !w.slice(0, -1).includes('\n')),
    'no newlines mid-run',
  );
  assert.equal(s.out[s.out.length - 1], '\n', 'finish ends the line');
  const last = draws[draws.length - 1];
  assert.match(last, /^\r\[#{10,}\] 100% train 1000\/1000 \| loss 2\.0000 \| 12\.3k tok\/s \| elapsed 0:10/);
  const mid = draws[Math.floor(draws.length / 2)];
  assert.match(mid, /ETA 0:0\d/);
});

test('non-TTY: plain lines at the line interval, first and last always printed', () => {
  let clock = 0;
  const s = sink(false);
  const bar = new ProgressBar({ total: 600, stream: s, now: () => clock, lineIntervalMs: 15_000 });
  for (let step = 1; step <= 600; step++) {
    clock += 100; // 60 s in all
    bar.update(step, { loss: 1.5 });
  }
  bar.finish();
  assert.ok(s.out.every((w) => w.endsWith('\n') && !w.includes('\r')));
  assert.ok(s.out.length >= 4 && s.out.length <= 6, `about one line per 15 s, got ${s.out.length}`);
  assert.match(s.out[0], /^1\/600 \| loss 1\.5000 \| ETA /);
  assert.match(s.out[s.out.length - 1], /^600\/600 \| loss 1\.5000 \| elapsed 1:00\n$/);
  assert.equal(s.out.filter((l) => l.startsWith('600/600')).length, 1, 'the final line is not repeated by finish()');
});

test('ETA counts from the first update, not from step 0, after a resume', () => {
  let clock = 0;
  const s = sink(false);
  const bar = new ProgressBar({ total: 2000, stream: s, now: () => clock, lineIntervalMs: 1 });
  bar.update(1000);
  clock = 10_000;
  bar.update(1100); // 10 steps/s → 900 steps left → 90 s
  assert.match(s.out[s.out.length - 1], /1100\/2000 \| ETA 1:30/);
});

test('interrupt: a line of its own (validation) clears the TTY bar first and redraws it under the line', () => {
  let clock = 0;
  const s = sink(true);
  const bar = new ProgressBar({ total: 20, label: 'train', stream: s, now: () => clock });
  bar.update(10, { loss: 1 });
  const before = s.out.length;
  bar.interrupt(() => s.write('validation after step 10/20 | val_ce_loss 6.9078\n'));
  const [clear, line, redraw] = s.out.slice(before);
  assert.match(clear, /^\r +\r$/, 'the bar is blanked and the cursor back at column 0');
  assert.ok(clear.length - 2 >= s.out[before - 1].length - 1, 'blanked over its whole width');
  assert.equal(line, 'validation after step 10/20 | val_ce_loss 6.9078\n');
  assert.match(redraw, /^\r\[#+-+\] +50% train 10\/20/);
  // Off a TTY (a log file) the line simply goes out between the bar's lines.
  const p = sink(false);
  const plain = new ProgressBar({ total: 20, stream: p, now: () => clock });
  plain.update(10);
  plain.interrupt(() => p.write('validation\n'));
  assert.deepEqual(p.out.slice(1), ['validation\n']);
});
