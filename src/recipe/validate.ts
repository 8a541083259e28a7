/**
 * Checks a recipe before anything is loaded, so a bad flag fails in a second with the arithmetic in the message,
 * not after an hour of loading a teacher.
 */
import { ConfigError } from '../errors.ts';
import { KD_LOSS_KINDS } from '../losses/types.ts';
import type { DistillationRecipe } from './config.ts';
import { teacherDevicesOf } from '../parallel/placement.ts';

export function validateRecipe(r: DistillationRecipe): void {
  const t = r.trainer;
  const positiveInt = (flag: string, v: number): void => {
    if (!Number.isInteger(v) || v < 1) throw new ConfigError(`--${flag} must be a positive integer, got ${v}`);
  };
  if (!r.name || /[/\\]|^\.\.?$/.test(r.name)) throw new ConfigError(`--name ${JSON.stringify(r.name)}: give a plain directory name (no slashes)`);
  if (!r.studentPath) throw new ConfigError('--student_path is required');
  if (r.kind === 'distill' && !r.teacherPath && !r.teacherCache) throw new ConfigError('distillation needs --teacher_path (or --teacher_cache)');
  positiveInt('max_steps', t.maxSteps);
  positiveInt('gbs', t.globalBatchSize);
  positiveInt('mbs', t.microBatchSize);
  positiveInt('seq_length', r.data.seqLength);
  positiveInt('save_interval', t.saveInterval);
  positiveInt('log_interval', t.logInterval);
  if (t.inFlight < 1) throw new ConfigError(`--in_flight must be at least 1, got ${t.inFlight}`);
  const p = r.parallel;
  for (const [flag, v] of [
    ['tp_size', p.tpSize],
    ['pp_size', p.ppSize],
    ['cp_size', p.cpSize],
    ['devices', p.devicesPerNode],
    ['num_nodes', p.numNodes],
  ] as const)
    positiveInt(flag, v);
  const workers = p.devicesPerNode * p.numNodes;
  const modelParallel = p.tpSize * p.ppSize * p.cpSize;
  if (workers % modelParallel !== 0) {
    throw new ConfigError(
      `--devices ${p.devicesPerNode} × --num_nodes ${p.numNodes} = ${workers} workers is not a multiple of tp × pp × cp = ${p.tpSize} × ${p.ppSize} × ${p.cpSize} = ${modelParallel}`,
    );
  }
  const teacherDevices = teacherDevicesOf(r);
  if (modelParallel > 1 && teacherDevices > 0) {
    throw new ConfigError(
      `--teacher_devices ${teacherDevices} with tp × pp × cp = ${modelParallel}: under model parallelism the teacher is split the same way as the student and runs on the same workers; drop --teacher_devices`,
    );
  }
  if (!Number.isInteger(teacherDevices) || teacherDevices < 0) throw new ConfigError(`--teacher_devices must be a non-negative integer, got ${teacherDevices}`);
  if (teacherDevices > 0 && (r.kind !== 'distill' || !r.teacherPath)) {
    throw new ConfigError(
      `--teacher_devices ${teacherDevices} places the teacher's forward pass on its own workers, so it needs --teacher_path (not pretraining, not --teacher_cache)`,
    );
  }
  const dp = workers / modelParallel;
  if (t.globalBatchSize % (t.microBatchSize * dp) !== 0) {
    throw new ConfigError(`--gbs ${t.globalBatchSize} must be a multiple of --mbs ${t.microBatchSize} × data-parallel size ${dp} = ${t.microBatchSize * dp}`);
  }
  const o = r.optim;
  if (!(o.lr > 0)) throw new ConfigError(`--lr must be positive, got ${o.lr}`);
  if (!(o.minLr >= 0 && o.minLr <= o.lr)) throw new ConfigError(`--min_lr ${o.minLr} must be in [0, --lr ${o.lr}]`);
  if (!(o.warmupSteps >= 0)) throw new ConfigError(`--warmup_steps must be ≥ 0, got ${o.warmupSteps}`);
  if (!(o.adamBeta1 >= 0 && o.adamBeta1 < 1) || !(o.adamBeta2 >= 0 && o.adamBeta2 < 1))
    throw new ConfigError(`--adam_beta1/--adam_beta2 must be in [0, 1), got ${o.adamBeta1}, ${o.adamBeta2}`);
  if (!(o.adamEps > 0)) throw new ConfigError(`--adam_eps must be positive, got ${o.adamEps}`);
  if (!(o.clipGrad >= 0)) throw new ConfigError(`--clip_grad must be ≥ 0 (0 turns clipping off), got ${o.clipGrad}`);
  const l = r.loss;
  if (!KD_LOSS_KINDS.includes(l.kind)) throw new ConfigError(`--kd_loss ${l.kind}: use one of ${KD_LOSS_KINDS.join(', ')}`);
  if (!(l.temperature > 0)) throw new ConfigError(`--temperature must be positive, got ${l.temperature}`);
  if (!(l.kdRatio >= 0 && l.kdRatio <= 1)) throw new ConfigError(`--kd_ratio must be in [0, 1], got ${l.kdRatio}`);
  if (!(l.jsdBeta > 0 && l.jsdBeta < 1)) throw new ConfigError(`--jsd_beta must be in (0, 1), got ${l.jsdBeta}`);
  if (!(l.skewLambda >= 0 && l.skewLambda < 1)) throw new ConfigError(`--skew_lambda must be in [0, 1), got ${l.skewLambda}`);
  if (!Number.isInteger(l.chunkSize) || l.chunkSize < 0)
    throw new ConfigError(`--loss_chunk must be 0 (size chunks by memory) or a positive integer, got ${l.chunkSize}`);
  const split = r.data.split.split(',').map(Number);
  if (split.length !== 3 || split.some((x) => !(x >= 0)) || split.reduce((a, b) => a + b, 0) <= 0) {
    throw new ConfigError(`--split ${r.data.split}: give three non-negative weights for train,valid,test, e.g. 99,1,0`);
  }
}
