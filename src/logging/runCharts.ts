/**
 * Turns the metrics of one or more runs into the charts a report shows, so the HTML report and the
 * PNG renderer plot exactly the same series. Several runs overlay on each chart with one colour per
 * run; an optional teacher loss is a horizontal reference line.
 */
import { decimate, PALETTE, TEACHER_COLOR, type ChartSpec, type HLine, type Point, type Series } from './chart.ts';
import { isValid, type MetricsRecord, type TrainRecord, type ValidRecord } from './metricsLog.ts';

export interface RunMetrics {
  /** Legend name, e.g. "KD student" or "CE-only student". */
  label: string;
  records: readonly MetricsRecord[];
  /** Overrides the palette colour for this run. */
  color?: string;
}

export interface TeacherReference {
  label?: string;
  /** The teacher's loss (CE on the same validation data), drawn across the loss charts. */
  loss: number;
}

export interface RunChartOptions {
  teacher?: TeacherReference;
  /** Per-series point cap (see decimate); default 1500. */
  maxPoints?: number;
}

type TrainField = 'loss' | 'kd_loss' | 'ce_loss' | 'lr' | 'tokens_per_s' | 'grad_norm';
type ValidField = 'val_ce_loss' | 'val_kd_loss';

function trainPoints(records: readonly MetricsRecord[], field: TrainField): Point[] {
  const out: Point[] = [];
  for (const r of records) {
    if (isValid(r)) continue;
    const y = (r as TrainRecord)[field];
    if (y !== undefined && Number.isFinite(y)) out.push({ x: r.step, y });
  }
  return out;
}

function validPoints(records: readonly MetricsRecord[], field: ValidField): Point[] {
  const out: Point[] = [];
  for (const r of records) {
    if (!isValid(r)) continue;
    const y = (r as ValidRecord)[field];
    if (y !== undefined && Number.isFinite(y)) out.push({ x: r.step, y });
  }
  return out;
}

/**
 * Builds the charts that have data: training loss, KD/CE components, validation loss, learning rate,
 * throughput. A chart none of the runs has data for is left out rather than drawn empty.
 */
export function runCharts(runs: readonly RunMetrics[], opts: RunChartOptions = {}): ChartSpec[] {
  const max = opts.maxPoints ?? 1500;
  const colorOf = (i: number): string => runs[i].color ?? PALETTE[i % PALETTE.length];
  const teacherLines: HLine[] =
    opts.teacher && Number.isFinite(opts.teacher.loss) ? [{ label: opts.teacher.label ?? 'teacher', y: opts.teacher.loss, color: TEACHER_COLOR }] : [];

  const perRun = (extract: (r: RunMetrics) => Point[], suffix = '', dashed = false): Series[] =>
    runs.map((run, i) => ({ label: run.label + suffix, points: decimate(extract(run), max), color: colorOf(i), dashed })).filter((s) => s.points.length > 0);

  const charts: ChartSpec[] = [];
  const add = (spec: ChartSpec): void => {
    if (spec.series.length > 0) charts.push(spec);
  };

  // Every x axis counts optimizer steps: integer ticks only.
  const stepChart = (title: string, yLabel: string, series: Series[], hlines?: HLine[]): void =>
    add({ title, xLabel: 'step', yLabel, series, hlines, integerX: true });

  // The teacher's line goes on the validation chart only: its CE and a KD run's training loss are not one quantity.
  stepChart(
    'Training loss',
    'loss',
    perRun((r) => trainPoints(r.records, 'loss')),
  );
  // KD and CE components of the distillation loss: solid KD, dashed CE, in the run's colour.
  stepChart('KD and CE loss', 'loss', [
    ...perRun((r) => trainPoints(r.records, 'kd_loss'), ' KD'),
    ...perRun((r) => trainPoints(r.records, 'ce_loss'), ' CE', true),
  ]);
  stepChart(
    'Validation CE',
    'student CE (nats/token)',
    perRun((r) => validPoints(r.records, 'val_ce_loss')),
    teacherLines,
  );
  stepChart(
    'Learning rate',
    'lr',
    perRun((r) => trainPoints(r.records, 'lr')),
  );
  stepChart(
    'Throughput',
    'tokens/s',
    perRun((r) => trainPoints(r.records, 'tokens_per_s')),
  );
  stepChart(
    'Gradient norm',
    'grad norm',
    perRun((r) => trainPoints(r.records, 'grad_norm')),
  );
  return charts;
}

export interface RunSummary {
  label: string;
  /** Optimizer steps done: the last logged step (steps are numbered 1..N). */
  steps: number;
  finalTrainLoss?: number;
  /** The lowest validation CE (val_ce_loss) and the step it was measured after. */
  bestValidLoss?: number;
  bestValidStep?: number;
  meanTokensPerS?: number;
}

/** The numbers a reader compares first: where each run ended and its best validation loss. */
export function summarizeRun(run: RunMetrics): RunSummary {
  const train = run.records.filter((r): r is TrainRecord => !isValid(r));
  const valid = run.records.filter(isValid);
  const last = train.length > 0 ? train[train.length - 1] : undefined;
  let best: ValidRecord | undefined;
  for (const v of valid) if (Number.isFinite(v.val_ce_loss) && (best === undefined || v.val_ce_loss < best.val_ce_loss)) best = v;
  const tps = train.map((r) => r.tokens_per_s).filter((v): v is number => v !== undefined && Number.isFinite(v));
  return {
    label: run.label,
    steps: last?.step ?? 0,
    finalTrainLoss: last?.loss,
    bestValidLoss: best?.val_ce_loss,
    bestValidStep: best?.step,
    meanTokensPerS: tps.length > 0 ? tps.reduce((a, b) => a + b, 0) / tps.length : undefined,
  };
}
