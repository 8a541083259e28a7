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
import type { StepResult } from './batch.ts';

export interface RunLogsOptions {
  /** Steps already done (resume): records after this step are dropped from metrics.jsonl. */
  resumeAfterStep: number;
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
    this.metrics = MetricsLog.open(runDir, { resumeAfterStep: o.resumeAfterStep });
    this.tb = TensorBoardWriter.open(join(runDir, 'tb_logs'));
    this.logInterval = o.logInterval ?? 1;
    // Quiet under the test runner, and in child runs whose parent draws one bar for all (npm start).
    const showBar = o.progress ?? (process.env.NODE_TEST_CONTEXT === undefined && !process.env.DISTILL_NO_PROGRESS);
    this.bar = showBar ? new ProgressBar({ total: o.maxSteps, label: 'train' }) : null;
  }

  onStep(r: StepResult): void {
    const tokensPerS = r.tokens / (r.elapsedMs / 1000);
    if ((r.step + 1) % this.logInterval === 0 || r.step + 1 === this.o.maxSteps) {
      this.metrics.append({
        step: r.step, loss: r.loss, kd_loss: r.kdLoss, ce_loss: r.ceLoss, grad_norm: r.gradNorm, lr: r.lr,
        tokens_per_s: tokensPerS,
      });
      this.tb.scalars({ 'train/loss': r.loss, 'train/kd_loss': r.kdLoss, 'train/ce_loss': r.ceLoss, 'train/grad_norm': r.gradNorm, 'train/lr': r.lr, 'train/tokens_per_s': tokensPerS }, r.step);
    }
    if (r.skipped) this.o.log(`step ${r.step}: non-finite loss or gradient (loss ${r.loss}, grad_norm ${r.gradNorm}); step skipped`);
    this.bar?.update(r.step + 1, { loss: r.loss, tokensPerS, note: `lr ${r.lr.toExponential(1)}` });
  }

  onValidation(v: ValidationLike): void {
    // The validation loss is the student's next-token CE in every run, so a distilled student and a CE-trained
    // one compare on one axis (and against the teacher's CE); the KD divergence is kept beside it.
    this.metrics.append({ split: 'valid', step: v.step, loss: v.studentCe, kd_loss: v.kdLoss, ce_loss: v.studentCe, ppl: Math.exp(v.studentCe) });
    this.tb.scalars({ 'valid/ce_loss': v.studentCe, 'valid/kd_loss': v.kdLoss }, v.step);
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
