/**
 * Everything around a run's stream that is the same in every layout: the run directory, resuming from its last
 * checkpoint (refusing another run's, naming what changed in the recipe, saying when the run is already
 * finished), the logs, the state each checkpoint records, and the final save of the student. The single-process
 * and data-parallel runner (pipelines/run.ts) and each model-parallel rank (pipelines/modelParallelRun.ts) differ
 * only in how they load and save weights, which they pass in.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { hashModelFiles } from '../checkpoint/save.ts';
import type { DistillationRecipe } from '../recipe/config.ts';
import { describeResumeChanges } from '../recipe/resumeChanges.ts';
import { removeIncompleteCheckpoints } from '../parallel/checkpointHygiene.ts';
import type { StepResult } from './batch.ts';
import { RunLogs } from './runLogs.ts';
import type { ValidationResult } from './runResult.ts';
import { checkFingerprint, latestCheckpoint, readTrainingState, type CheckpointRef, type RunFingerprint, type TrainingState } from './trainingCheckpoint.ts';

export interface PrepareRunOptions {
  /** The rank that writes checkpoints, logs and the final student (rank 0); the others only read. */
  leader: boolean;
  log: (line: string) => void;
  /** Show a progress bar (default: when not under the test runner). */
  progress?: boolean;
  /** Stop after this many steps of this invocation (tests of resume); the checkpoint is written first. */
  stopAfterSteps?: number;
}

/** What a checkpoint was made from: the student, the teacher (or its cache), the data and the batch geometry. */
export function runFingerprint(recipe: DistillationRecipe, data: string, teacherCacheId?: string): RunFingerprint {
  return {
    student: hashModelFiles(recipe.studentPath),
    teacher: teacherCacheId ? `teacher cache ${teacherCacheId}` : recipe.teacherPath ? hashModelFiles(recipe.teacherPath) : 'none',
    data,
    seqLength: recipe.data.seqLength,
    globalBatchSize: recipe.trainer.globalBatchSize,
  };
}

export class PreparedRun {
  readonly runDir: string;
  readonly leader: boolean;
  /** The checkpoint this run resumes from, if any. */
  readonly checkpoint: CheckpointRef | null;
  /** Where the student's weights come from: the checkpoint's, or the recipe's student. */
  readonly studentDir: string;
  /** Where the finished student goes. */
  readonly finalDir: string;
  /** Steps already done: the first step this invocation takes (0-based). */
  startStep = 0;
  skippedSteps = 0;
  /** The last step of the run (0-based), and the last this invocation takes. */
  readonly lastStep: number;
  stopAt: number;
  logs: RunLogs | null = null;
  readonly steps: StepResult[] = [];
  readonly validations: ValidationResult[] = [];
  private fingerprint: RunFingerprint | null = null;
  private saved: TrainingState | null = null;

  constructor(
    readonly recipe: DistillationRecipe,
    private readonly o: PrepareRunOptions,
  ) {
    this.runDir = join(recipe.logDir, recipe.name);
    this.leader = o.leader;
    // The folder itself is made by resume(), once the models and the data have opened: a run refused before
    // then leaves no empty <log_dir>/<name>/ that looks like a run.
    // A killed run may have left hidden temporaries (and, before 0.1, a half-deleted old checkpoint).
    if (o.leader) removeIncompleteCheckpoints(this.runDir);
    this.checkpoint = latestCheckpoint(this.runDir);
    this.studentDir = this.checkpoint ? join(this.checkpoint.dir, 'student') : recipe.studentPath;
    this.finalDir = join(this.runDir, 'student');
    this.lastStep = recipe.trainer.maxSteps - 1;
    this.stopAt = this.lastStep;
  }

  /**
   * Checks the checkpoint against this run and takes its position: another run's checkpoint is refused, a changed
   * recipe is named with what it does, and `loadOptimizer` reads the saved AdamW state. Then opens the logs.
   * Call it once the models and the data have opened: it makes the run folder.
   */
  resume(fingerprint: RunFingerprint, loadOptimizer: (ref: CheckpointRef) => void, layout = ''): void {
    mkdirSync(this.runDir, { recursive: true });
    this.fingerprint = fingerprint;
    const ref = this.checkpoint;
    if (ref) {
      const state = readTrainingState(ref);
      checkFingerprint(ref, state, fingerprint);
      this.saved = state;
      this.startStep = state.step;
      this.skippedSteps = state.skippedSteps;
      if (!this.alreadyFinished) {
        loadOptimizer(ref);
        this.say(`resuming ${this.runDir} from step ${this.startStep} (${ref.dir})${layout}`);
        if (state.recipe) for (const line of describeResumeChanges(state.recipe, this.recipe, this.startStep)) this.say(`resume: ${line}`);
      }
    }
    const n = this.o.stopAfterSteps;
    this.stopAt = n !== undefined ? Math.min(this.lastStep, this.startStep + n - 1) : this.lastStep;
    if (this.alreadyFinished) {
      const last = this.saved?.lastStep;
      const max = this.recipe.trainer.maxSteps;
      const done = this.startStep === max ? `${max} of --max_steps ${max} steps done` : `${this.startStep} steps done, past --max_steps ${max}`;
      this.say(
        `${this.runDir} is finished: ${done}${last ? ` (last loss ${last.loss.toFixed(4)})` : ''}; the student is in ${this.finalDir}. Raise --max_steps to train on, or use another --name.`,
      );
      return;
    }
    if (this.leader) {
      this.logs = new RunLogs(this.runDir, {
        resumeAfterStep: this.startStep - 1,
        maxSteps: this.recipe.trainer.maxSteps,
        startStep: this.startStep,
        log: this.o.log,
        progress: this.o.progress,
        logInterval: this.recipe.trainer.logInterval,
      });
    }
  }

  /** The checkpoint had reached --max_steps: there is nothing to train. */
  get alreadyFinished(): boolean {
    return this.startStep > this.lastStep;
  }

  /** A finished run's last step, from its checkpoint (checkpoints before 0.2 do not hold it). */
  get savedLastStep(): StepResult | undefined {
    return this.saved?.lastStep;
  }

  /** Records a step: counts it if skipped, keeps it for the result. Call it once per step, in order. */
  onStep(r: StepResult): void {
    this.steps.push(r);
    if (r.skipped) this.skippedSteps++;
  }

  onValidation(v: ValidationResult): void {
    this.validations.push(v);
    this.logs?.onValidation(v);
  }

  /** What the checkpoint after step `r` records. */
  trainingState(r: StepResult): TrainingState {
    if (!this.fingerprint) throw new Error('PreparedRun.trainingState before resume(): the fingerprint is not known yet (a bug)');
    return {
      format: 1,
      step: r.step + 1,
      samplesSeen: r.samplesSeen,
      seed: this.recipe.data.seed,
      skippedSteps: this.skippedSteps,
      fingerprint: this.fingerprint,
      recipe: this.recipe,
      lastStep: r,
    };
  }

  /**
   * Ends the run: a run that reached its last step saves the student (rank 0, through `saveStudent`) and writes
   * its report; a stopped one keeps its checkpoint only. Returns whether the run is finished.
   */
  async finish(stoppedEarly: boolean, saveStudent: (dir: string) => Promise<void>): Promise<boolean> {
    const finished = this.alreadyFinished || (!stoppedEarly && this.stopAt === this.lastStep);
    // A finished run whose final save was lost (killed after its last checkpoint) saves it now.
    if (finished && (!this.alreadyFinished || !existsSync(join(this.finalDir, 'config.json')))) await saveStudent(this.finalDir);
    this.logs?.close(finished ? { studentDir: this.finalDir } : undefined);
    return finished;
  }

  private say(line: string): void {
    if (this.leader) this.o.log(line);
  }
}

export function prepareRun(recipe: DistillationRecipe, o: PrepareRunOptions): PreparedRun {
  return new PreparedRun(recipe, o);
}
