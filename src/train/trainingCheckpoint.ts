/**
 * Training checkpoints: everything a run needs to continue exactly as if it had never stopped. The student in the
 * Hugging Face layout (so any checkpoint is also a usable model), the AdamW moments, the step, the data position,
 * the RNG seed, and a fingerprint of what the run was made from, so that a log_dir holding another run's
 * checkpoint is refused instead of silently mixed in.
 *
 * Layout: `<run>/checkpoints/step-000042/{student/, optimizer.safetensors, state.json}`. Each checkpoint directory
 * is filled under a temporary name and renamed into place, so a directory named step-* is always complete.
 */
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tempSibling, writeDirAtomic, writeFileAtomic } from '../io/atomicWrite.ts';
import { SafetensorsReader, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { saveModel, type SavableModel } from '../checkpoint/save.ts';
import type { AdamW, AdamWState } from '../optim/adamw.ts';
import { DistillError } from '../errors.ts';
import type { DistillationRecipe } from '../recipe/config.ts';
import type { StepResult } from './batch.ts';

export const CHECKPOINT_FORMAT = 1;

/** What a run was made from; a checkpoint resumes only a run with the same fingerprint. */
export interface RunFingerprint {
  student: string;
  teacher: string;
  data: string;
  seqLength: number;
  globalBatchSize: number;
}

export interface TrainingState {
  format: number;
  /** Steps completed: the next step to run. */
  step: number;
  samplesSeen: number;
  seed: number;
  skippedSteps: number;
  fingerprint: RunFingerprint;
  /** The recipe the run had when this checkpoint was written (absent before 0.2): a resume names what changed. */
  recipe?: DistillationRecipe;
  /** The step this checkpoint ends with (absent before 0.2): a finished run reports it when run again. */
  lastStep?: StepResult;
}

export class ResumeRefusedError extends DistillError {}

const STEP_DIR = /^step-(\d+)$/;

export function checkpointsDir(runDir: string): string {
  return join(runDir, 'checkpoints');
}

/** Writes a checkpoint atomically and keeps the newest `keep` ones. */
export async function saveTrainingCheckpoint(
  runDir: string,
  student: SavableModel,
  optimizer: Pick<AdamW, 'state'>,
  state: TrainingState,
  keep = 2,
): Promise<string> {
  const opt = await optimizer.state();
  const dir = join(checkpointsDir(runDir), `step-${String(state.step).padStart(6, '0')}`);
  const tensors: TensorToWrite[] = [];
  for (const [name, mv] of opt.moments) {
    const shape = student.params.get(name)!.shape;
    tensors.push({ name: `exp_avg.${name}`, dtype: 'F32', shape, data: mv.m });
    tensors.push({ name: `exp_avg_sq.${name}`, dtype: 'F32', shape, data: mv.v });
  }
  // The student is written first into its own atomic directory, then moved inside the checkpoint's temp dir.
  const studentTmp = join(checkpointsDir(runDir), `.student-${process.pid}-${state.step}`);
  rmSync(studentTmp, { recursive: true, force: true });
  await saveModel(student, studentTmp, { dtype: 'float32' });
  writeDirAtomic(dir, (tmp) => {
    writeSafetensors(join(tmp, 'optimizer.safetensors'), tensors, { step: String(opt.step) });
    writeFileAtomic(join(tmp, 'state.json'), JSON.stringify(state, null, 2) + '\n');
    renameSync(studentTmp, join(tmp, 'student'));
  });
  // Rename before deleting: a recursive delete killed half-way would leave a step-* directory missing files (or
  // missing state.json but holding the rest), and a step-* name must always mean a complete checkpoint.
  for (const old of listCheckpoints(runDir).slice(0, -keep)) {
    const gone = tempSibling(old.dir);
    renameSync(old.dir, gone);
    rmSync(gone, { recursive: true, force: true });
  }
  return dir;
}

export interface CheckpointRef {
  step: number;
  dir: string;
}

/** Complete checkpoints, oldest first. Temporary directories (names starting with '.') are never listed. */
export function listCheckpoints(runDir: string): CheckpointRef[] {
  const root = checkpointsDir(runDir);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .map((n) => ({ m: STEP_DIR.exec(n), n }))
    .filter((x) => x.m && existsSync(join(root, x.n, 'state.json')))
    .map((x) => ({ step: Number(x.m![1]), dir: join(root, x.n) }))
    .sort((a, b) => a.step - b.step);
}

export function latestCheckpoint(runDir: string): CheckpointRef | null {
  const all = listCheckpoints(runDir);
  return all.length ? all[all.length - 1] : null;
}

export function readTrainingState(ref: CheckpointRef): TrainingState {
  return JSON.parse(readFileSync(join(ref.dir, 'state.json'), 'utf8')) as TrainingState;
}

/** Refuses a checkpoint made from another model, teacher or data, naming what differs. */
export function checkFingerprint(ref: CheckpointRef, state: TrainingState, want: RunFingerprint): void {
  const diffs = (Object.keys(want) as (keyof RunFingerprint)[]).filter((k) => state.fingerprint[k] !== want[k]);
  if (diffs.length) {
    throw new ResumeRefusedError(
      `${ref.dir} belongs to another run: its ${diffs.join(', ')} differ${diffs.length === 1 ? 's' : ''} from this run's ` +
        `(${diffs.map((k) => `${k}: checkpoint ${String(state.fingerprint[k]).slice(0, 16)} vs run ${String(want[k]).slice(0, 16)}`).join('; ')}). ` +
        'Use another --name or --log_dir, or delete that directory to start over.',
    );
  }
}

export function loadOptimizerState(ref: CheckpointRef, optimizer: AdamW, paramNames: Iterable<string>): void {
  optimizer.loadState(readOptimizerState(ref, paramNames));
}

/**
 * The AdamW moments saved in a checkpoint (always full tensors), each passed through `part` when given: a model-
 * parallel rank takes its slice of each.
 */
export function readOptimizerState(ref: CheckpointRef, paramNames: Iterable<string>, part?: (name: string, full: Float32Array) => Float32Array): AdamWState {
  const r = SafetensorsReader.open(join(ref.dir, 'optimizer.safetensors'));
  try {
    const take = (name: string, key: string): Float32Array => {
      const full = r.read(key).data as Float32Array;
      return part ? part(name, full) : full;
    };
    const moments: AdamWState['moments'] = new Map();
    for (const name of paramNames) moments.set(name, { m: take(name, `exp_avg.${name}`), v: take(name, `exp_avg_sq.${name}`) });
    return { step: Number(r.metadata.step), moments };
  } finally {
    r.close();
  }
}
