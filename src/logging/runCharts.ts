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
type ValidField = 'loss' | 'kd_loss' | 'ce_loss';

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
  const teacherLines: HLine[] = opts.teacher && Number.isFinite(opts.teacher.loss)
    ? [{ label: opts.teacher.label ?? 'teacher', y: opts.teacher.loss, color: TEACHER_COLOR }]
    : [];

  const perRun = (extract: (r: RunMetrics) => Point[], suffix = '', dashed = false): Series[] =>
    runs
      .map((run, i) => ({ label: run.label + suffix, points: decimate(extract(run), max), color: colorOf(i), dashed }))
      .filter((s) => s.points.length > 0);

  const charts: ChartSpec[] = [];
  const add = (spec: ChartSpec): void => {
    if (spec.series.length > 0) charts.push(spec);
  };

  add({ title: 'Training loss', xLabel: 'step', yLabel: 'loss', series: perRun((r) => trainPoints(r.records, 'loss')), hlines: teacherLines });

  // KD and CE components of the distillation loss: solid KD, dashed CE, in the run's colour.
  add({
    title: 'KD and CE loss',
    xLabel: 'step',
    yLabel: 'loss',
    series: [
      ...perRun((r) => trainPoints(r.records, 'kd_loss'), ' KD'),
      ...perRun((r) => trainPoints(r.records, 'ce_loss'), ' CE', true),
    ],
  });

  add({ title: 'Validation loss', xLabel: 'step', yLabel: 'loss', series: perRun((r) => validPoints(r.records, 'loss')), hlines: teacherLines });
  add({ title: 'Learning rate', xLabel: 'step', yLabel: 'lr', series: perRun((r) => trainPoints(r.records, 'lr')) });
  add({ title: 'Throughput', xLabel: 'step', yLabel: 'tokens/s', series: perRun((r) => trainPoints(r.records, 'tokens_per_s')) });
  add({ title: 'Gradient norm', xLabel: 'step', yLabel: 'grad norm', series: perRun((r) => trainPoints(r.records, 'grad_norm')) });
  return charts;
}

export interface RunSummary {
  label: string;
  steps: number;
  finalTrainLoss?: number;
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
  for (const v of valid) if (Number.isFinite(v.loss) && (best === undefined || v.loss < best.loss)) best = v;
  const tps = train.map((r) => r.tokens_per_s).filter((v): v is number => v !== undefined && Number.isFinite(v));
  return {
    label: run.label,
    steps: last?.step ?? 0,
    finalTrainLoss: last?.loss,
    bestValidLoss: best?.loss,
    bestValidStep: best?.step,
    meanTokensPerS: tps.length > 0 ? tps.reduce((a, b) => a + b, 0) / tps.length : undefined,
  };
}
