/**
 * Progress display for long loops (training, evaluation, preprocessing).
 *
 * On a TTY it redraws one line in place with '\r', at most every `ttyIntervalMs` (default 250 ms, ~4/s)
 * because terminal writes from a hot loop cost real time. When the stream is not a TTY (CI logs, a file)
 * '\r' would produce one enormous line, so it prints a plain line every `lineIntervalMs` instead.
 */

/** The part of a stream the bar needs; process.stderr satisfies it. */
export interface ProgressStream {
  write(chunk: string): boolean;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressFields {
  loss?: number;
  tokensPerS?: number;
  /** Extra short text, e.g. "lr 3e-4". */
  note?: string;
}

export interface ProgressOptions {
  total: number;
  label?: string;
  stream?: ProgressStream;
  /** Overrides the stream's own isTTY. */
  tty?: boolean;
  ttyIntervalMs?: number;
  lineIntervalMs?: number;
  /** Clock in ms, injectable for tests. */
  now?: () => number;
}

/** Seconds → "1:02:03" or "2:03"; "?" when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

function formatRate(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(v >= 100 ? 0 : 1);
}

export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly ttyIntervalMs: number;
  private readonly lineIntervalMs: number;
  private readonly label: string;
  private startTime: number | undefined;
  private startStep = 0;
  private lastDraw = -Infinity;
  private step = 0;
  private fields: ProgressFields = {};
  private drawnWidth = 0;
  private finished = false;
  /** An update arrived since the last draw. */
  private dirty = false;

  constructor(private readonly opts: ProgressOptions) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? this.stream.isTTY === true;
    this.now = opts.now ?? Date.now;
    this.ttyIntervalMs = opts.ttyIntervalMs ?? 250;
    this.lineIntervalMs = opts.lineIntervalMs ?? 15_000;
    this.label = opts.label ?? '';
  }

  /**
   * Reports that `step` of `total` is done. The first call sets the origin for rate and ETA, so a run
   * resumed at step 5000 does not count the 5000 restored steps as done in zero seconds.
   */
  update(step: number, fields: ProgressFields = {}): void {
    if (this.finished) return;
    const t = this.now();
    if (this.startTime === undefined) {
      this.startTime = t;
      this.startStep = step;
    }
    this.step = step;
    this.fields = { ...this.fields, ...fields };
    this.dirty = true;
    const interval = this.tty ? this.ttyIntervalMs : this.lineIntervalMs;
    // Non-TTY: the first update prints at once so a CI log shows the job started.
    if (t - this.lastDraw >= interval || step >= this.opts.total) this.draw(t);
  }

  /**
   * Prints a line of its own (a validation result, a warning) through `print`: on a TTY the bar's line is cleared
   * first and the bar redrawn under it, so neither overwrites the other; elsewhere the line simply goes out.
   */
  interrupt(print: () => void): void {
    const drawn = this.tty && !this.finished && this.drawnWidth > 0;
    if (drawn) {
      this.stream.write('\r' + ' '.repeat(this.drawnWidth) + '\r');
      this.drawnWidth = 0;
    }
    print();
    if (drawn) this.draw(this.now());
  }

  /** Prints the final state and, on a TTY, moves to a new line so later output does not overwrite it. */
  finish(fields: ProgressFields = {}): void {
    if (this.finished) return;
    if (Object.keys(fields).length > 0) this.dirty = true;
    this.fields = { ...this.fields, ...fields };
    if (this.startTime === undefined) {
      this.startTime = this.now();
      this.startStep = this.step;
      this.dirty = true;
    }
    if (this.dirty) this.draw(this.now());
    if (this.tty) this.stream.write('\n');
    this.finished = true;
  }

  /** The status text without bar or control characters, e.g. for logs. */
  text(t = this.now()): string {
    const { total } = this.opts;
    const elapsed = this.startTime === undefined ? 0 : (t - this.startTime) / 1000;
    const done = this.step - this.startStep;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (total - this.step) / rate : NaN;
    const parts = [`${this.label ? this.label + ' ' : ''}${this.step}/${total}`];
    if (this.fields.loss !== undefined) parts.push(`loss ${Number.isFinite(this.fields.loss) ? this.fields.loss.toFixed(4) : String(this.fields.loss)}`);
    if (this.fields.tokensPerS !== undefined) parts.push(`${formatRate(this.fields.tokensPerS)} tok/s`);
    if (this.fields.note) parts.push(this.fields.note);
    parts.push(this.step >= total ? `elapsed ${formatDuration(elapsed)}` : `ETA ${formatDuration(eta)}`);
    return parts.join(' | ');
  }

  private draw(t: number): void {
    this.lastDraw = t;
    this.dirty = false;
    const text = this.text(t);
    if (!this.tty) {
      this.stream.write(text + '\n');
      return;
    }
    const cols = this.stream.columns ?? 100;
    const frac = this.opts.total > 0 ? Math.min(1, Math.max(0, this.step / this.opts.total)) : 0;
    const barW = Math.max(10, Math.min(40, cols - text.length - 10));
    const filled = Math.round(frac * barW);
    let line = `[${'#'.repeat(filled)}${'-'.repeat(barW - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${text}`;
    if (line.length > cols - 1) line = line.slice(0, cols - 1);
    // Pad over leftovers of a longer previous line instead of clearing, which flickers on some terminals.
    const pad = Math.max(0, this.drawnWidth - line.length);
    this.stream.write('\r' + line + ' '.repeat(pad));
    this.drawnWidth = line.length;
  }
}
