/**
 * Where a run reports: `metrics.jsonl` (every --log_interval steps and every validation), TensorBoard event files
 * (NeMo's convention, `tb_logs/`), a progress bar on stderr, and at the end an HTML report with PNG charts.
 */
import { join } from 'node:path';
import { MetricsLog } from '../logging/metricsLog.ts';
import { TensorBoardWriter } from '../logging/tensorboard.ts';
import { ProgressBar } from '../logging/progress.ts';
import { writeRunReport } from '../logging/report.ts';
import { writeChartPngs } from '../logging/plot.ts';
import { runCharts } from '../logging/runCharts.ts';
import { readMetrics } from '../logging/metricsLog.ts';
import { skippedStepLine, stepRecords, validationRecords } from '../logging/runRecords.ts';
import type { StepResult } from './batch.ts';

export interface RunLogsOptions {
  /** Unused: records after `startStep` steps done are dropped from metrics.jsonl (runRecords.ts numbers steps 1..N). */
  resumeAfterStep: number;
  /** Steps already done (resume). */
  startStep: number;
  maxSteps: number;
  logInterval?: number;
  log: (line: string) => void;
  /** Progress bar on stderr; default on unless under the test runner. */
  progress?: boolean;
}

export interface ValidationLike {
  step: number;
  studentCe: number;
  kdLoss?: number;
  tokens?: number;
}

export class RunLogs {
  private readonly metrics: MetricsLog;
  private readonly tb: TensorBoardWriter;
  private readonly bar: ProgressBar | null;
  private readonly logInterval: number;

  constructor(
    readonly runDir: string,
    private readonly o: RunLogsOptions,
  ) {
    // Records are numbered by steps done (runRecords.ts): a checkpoint after startStep steps keeps records 1..startStep.
    this.metrics = MetricsLog.open(runDir, { resumeAfterStep: o.startStep });
    this.tb = TensorBoardWriter.open(join(runDir, 'tb_logs'));
    this.logInterval = o.logInterval ?? 1;
    // Quiet under the test runner, and in child runs whose parent draws one bar for all (npm start).
    const showBar = o.progress ?? (process.env.NODE_TEST_CONTEXT === undefined && !process.env.DISTILL_NO_PROGRESS);
    this.bar = showBar ? new ProgressBar({ total: o.maxSteps, label: 'train' }) : null;
  }

  onStep(r: StepResult): void {
    const s = stepRecords(r);
    if (s.step % this.logInterval === 0 || s.step === this.o.maxSteps) {
      this.metrics.append(s.record);
      this.tb.scalars(s.scalars, s.step);
    }
    if (r.skipped) this.say(skippedStepLine(r));
    this.bar?.update(s.step, { loss: r.loss, tokensPerS: s.record.tokens_per_s, note: `lr ${r.lr.toExponential(1)}` });
  }

  onValidation(v: ValidationLike): void {
    const s = validationRecords(v, this.o.maxSteps);
    this.metrics.append(s.record);
    this.tb.scalars(s.scalars, s.step);
    this.say(s.line);
  }

  /** A line on the console that the progress bar does not overwrite. */
  private say(line: string): void {
    if (this.bar) this.bar.interrupt(() => this.o.log(line));
    else this.o.log(line);
  }

  /** Closes the logs; after a finished run, writes the report and its PNG charts. */
  close(finished?: { studentDir: string }): void {
    this.bar?.finish();
    this.metrics.close();
    this.tb.close();
    if (finished) {
      const report = writeRunReport(this.runDir, 'student');
      writeChartPngs(this.runDir, runCharts([{ label: 'student', records: readMetrics(this.runDir) }]));
      this.o.log(`student: ${finished.studentDir}\nreport: ${report}`);
    }
  }
}
