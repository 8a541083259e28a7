/**
 * `distill run` / `distill pretrain` flags, with NeMo's names and defaults, and their translation into a recipe.
 */
import { BACKEND_CHOICES } from '../backend/select.ts';
import { PRECISIONS, type Precision } from '../backend/webgpu/mixedPrecisionMatMul.ts';
import { KD_LOSS_KINDS } from '../losses/types.ts';
import { RECOMPUTE_GRANULARITIES, type RecomputeGranularity } from '../model/attention.ts';
import { DEFAULT_RECOMPUTE_LAYERS, RECOMPUTE_METHODS, type RecomputeLayers } from '../model/base.ts';
import { DEFAULTS, distillationRecipe, pretrainRecipe, type DistillationRecipe } from '../recipe/config.ts';
import { ConfigError } from '../errors.ts';
import { parseFlags, required, type FlagSpecs } from './flags.ts';

const D = DEFAULTS;

export const RUN_FLAGS = {
  name: { kind: 'string', help: 'run name: the run lives in <log_dir>/<name>' },
  student_path: { kind: 'string', help: 'Hugging Face checkpoint directory of the student (config.json + model.safetensors)' },
  teacher_path: { kind: 'string', help: 'Hugging Face checkpoint directory of the teacher (frozen, never saved)' },
  teacher_cache: { kind: 'string', help: 'distil from a precomputed teacher cache instead of running the teacher' },
  log_dir: { kind: 'string', help: 'where runs are written', default: 'runs' },
  data_paths: { kind: 'string', help: 'datasets: "w1 prefix1 w2 prefix2" or prefixes / Arrow shard dirs (default: the bundled Brown corpus)' },
  seq_length: { kind: 'int', help: 'tokens per sample', default: D.data.seqLength, min: 1 },
  split: { kind: 'string', help: 'train,valid,test weights over documents', default: D.data.split },
  seed: { kind: 'int', help: 'seed of the data shuffle', default: D.data.seed },
  max_steps: { kind: 'int', help: 'optimizer steps', default: D.trainer.maxSteps, min: 1 },
  gbs: { kind: 'int', help: 'global batch size (samples per optimizer step)', default: D.trainer.globalBatchSize, min: 1 },
  mbs: { kind: 'int', help: 'micro batch size (gradient accumulation over gbs / mbs micro-batches)', default: D.trainer.microBatchSize, min: 1 },
  val_check_interval: { kind: 'int', help: 'validate every N steps (0: never)', default: D.trainer.valCheckInterval, min: 0 },
  limit_val_batches: { kind: 'int', help: 'validation micro-batches per validation', default: D.trainer.limitValBatches, min: 1 },
  log_interval: { kind: 'int', help: 'log every N steps', default: D.trainer.logInterval, min: 1 },
  save_interval: { kind: 'int', help: 'checkpoint every N steps', default: D.trainer.saveInterval, min: 1 },
  in_flight: { kind: 'int', help: 'micro-batches allowed in flight between the data source and the optimizer', default: D.trainer.inFlight, min: 1 },
  nan_policy: {
    kind: 'string',
    help: 'on a non-finite loss or gradient: skip the step (and stop after 10 in a row) or stop',
    default: D.trainer.nanPolicy,
    choices: ['skip', 'stop'],
  },
  lr: { kind: 'number', help: 'peak learning rate', default: D.optim.lr },
  min_lr: { kind: 'number', help: 'final learning rate of the cosine decay', default: D.optim.minLr },
  warmup_steps: { kind: 'int', help: 'linear warm-up steps', default: D.optim.warmupSteps, min: 0 },
  adam_beta1: { kind: 'number', help: 'AdamW β1', default: D.optim.adamBeta1 },
  adam_beta2: { kind: 'number', help: 'AdamW β2', default: D.optim.adamBeta2 },
  adam_eps: { kind: 'number', help: 'AdamW ε', default: D.optim.adamEps },
  weight_decay: { kind: 'number', help: 'decoupled weight decay (not on biases and norm weights)', default: D.optim.weightDecay },
  weight_decay_all: { kind: 'boolean', help: 'apply weight decay to every parameter, biases and norms too' },
  clip_grad: { kind: 'number', help: 'global gradient-norm clipping (0: off)', default: D.optim.clipGrad },
  kd_loss: { kind: 'string', help: 'divergence', default: D.loss.kind, choices: KD_LOSS_KINDS },
  temperature: { kind: 'number', help: 'softmax temperature τ on both sides', default: D.loss.temperature },
  temperature_scaling: { kind: 'boolean', help: 'multiply the KD loss by τ² when τ ≠ 1 (Hinton)', default: D.loss.scaleByTemperatureSquared },
  kd_ratio: { kind: 'number', help: 'α in (1 − α)·CE + α·KD', default: D.loss.kdRatio },
  jsd_beta: { kind: 'number', help: 'β of the generalised JSD', default: D.loss.jsdBeta },
  skew_lambda: { kind: 'number', help: 'λ of the skew KL', default: D.loss.skewLambda },
  loss_chunk: {
    kind: 'int',
    help: 'token positions per chunk of the vocabulary-wide loss (0: as many as fit 64 MiB per [chunk, vocab] tensor)',
    default: D.loss.chunkSize,
    min: 0,
  },
  tp_size: { kind: 'int', help: 'tensor parallel size', default: 1, min: 1 },
  pp_size: { kind: 'int', help: 'pipeline parallel size', default: 1, min: 1 },
  cp_size: { kind: 'int', help: 'context parallel size', default: 1, min: 1 },
  make_vocab_size_divisible_by: {
    kind: 'int',
    help: 'under --tp_size > 1, pad the vocabulary rows to a multiple of this × tp (Megatron; padding is masked and never saved)',
    default: 128,
    min: 1,
  },
  overlap_grad_reduce: {
    kind: 'boolean',
    help: "NeMo's ddp.overlap_grad_reduce: under data parallelism over NCCL (cuda), all-reduce each gradient bucket during the backward pass, on a second stream",
    default: true,
  },
  devices: { kind: 'int', help: 'workers per node', default: 1, min: 1 },
  num_nodes: { kind: 'int', help: 'nodes', default: 1, min: 1 },
  teacher_devices: {
    kind: 'int',
    help: 'workers of their own for the teacher forward pass, streaming to the students (0: in each student worker)',
    default: 0,
    min: 0,
  },
  backend: { kind: 'string', help: 'compute backend', default: 'auto', choices: BACKEND_CHOICES },
  precision: {
    kind: 'string',
    help: "NeMo's trainer.precision: 32, or bf16-mixed / 16-mixed for 16-bit tensor-core matmuls on cuda (bf16 or f16 operands) and webgpu (f16) (f32 weights, optimizer and loss)",
    default: '32',
    choices: PRECISIONS,
  },
  recompute_granularity: {
    kind: 'string',
    help: "NeMo's model.recompute_granularity: selective keeps only q, k and v of each attention and recomputes its [heads, seq, seq] probabilities in the backward (long sequences); full keeps only the input of whole layers and runs them again in the backward; absent: keep everything",
    choices: RECOMPUTE_GRANULARITIES,
  },
  recompute_method: {
    kind: 'string',
    help: 'under --recompute_granularity full: uniform recomputes every chunk of --recompute_num_layers layers, block only the first --recompute_num_layers layers',
    default: DEFAULT_RECOMPUTE_LAYERS.method,
    choices: RECOMPUTE_METHODS,
  },
  recompute_num_layers: {
    kind: 'int',
    help: 'under --recompute_granularity full: layers per recomputed chunk (uniform) or layers recomputed (block)',
    default: DEFAULT_RECOMPUTE_LAYERS.numLayers,
    min: 1,
  },
  help: { kind: 'boolean', help: 'print this help' },
} as const satisfies FlagSpecs;

/** The flags that only distillation reads: `distill pretrain` neither lists nor accepts them. */
export const DISTILLATION_ONLY_FLAGS = [
  'teacher_path',
  'teacher_cache',
  'teacher_devices',
  'kd_loss',
  'temperature',
  'temperature_scaling',
  'kd_ratio',
  'jsd_beta',
  'skew_lambda',
] as const satisfies readonly (keyof typeof RUN_FLAGS)[];

type DistillationOnlyFlag = (typeof DISTILLATION_ONLY_FLAGS)[number];

/** `distill pretrain`'s flags: `distill run`'s without the teacher and the KD loss. */
export const PRETRAIN_FLAGS = Object.fromEntries(
  Object.entries(RUN_FLAGS).filter(([k]) => !(DISTILLATION_ONLY_FLAGS as readonly string[]).includes(k)),
) as Omit<typeof RUN_FLAGS, DistillationOnlyFlag>;

export function recipeFromFlags(kind: 'distill' | 'pretrain', argv: string[], defaultDataPaths: () => string): DistillationRecipe {
  const command = kind === 'distill' ? 'distill run' : 'distill pretrain';
  const { flags: f, given } = parseFlags(argv, RUN_FLAGS, command);
  if (kind === 'pretrain') {
    // Pretraining has no teacher and no KD term: a teacher flag here is a mix-up that would otherwise be ignored.
    const kdFlags = DISTILLATION_ONLY_FLAGS.filter((k) => given.has(k));
    if (kdFlags.length > 0) {
      throw new ConfigError(
        `${command} trains on next-token cross-entropy alone, with no teacher: ${kdFlags.map((k) => '--' + k).join(', ')} ${kdFlags.length > 1 ? 'are distillation flags' : 'is a distillation flag'}. Drop ${kdFlags.length > 1 ? 'them' : 'it'}, or use \`distill run\` to distil from a teacher.`,
      );
    }
  }
  const common = {
    name: required(command, 'name', f.name),
    dir: f.log_dir,
    studentPath: required(command, 'student_path', f.student_path),
    backend: f.backend as DistillationRecipe['backend'],
    data: { dataPaths: f.data_paths ?? defaultDataPaths(), seqLength: f.seq_length, split: f.split, seed: f.seed },
    trainer: {
      maxSteps: f.max_steps,
      globalBatchSize: f.gbs,
      microBatchSize: f.mbs,
      valCheckInterval: f.val_check_interval,
      limitValBatches: f.limit_val_batches,
      logInterval: f.log_interval,
      saveInterval: f.save_interval,
      inFlight: f.in_flight,
      nanPolicy: f.nan_policy as 'skip' | 'stop',
      precision: f.precision as Precision,
      recomputeGranularity: (f.recompute_granularity ?? null) as RecomputeGranularity,
      recomputeLayers: {
        method: (f.recompute_method ?? DEFAULT_RECOMPUTE_LAYERS.method) as RecomputeLayers['method'],
        numLayers: f.recompute_num_layers ?? DEFAULT_RECOMPUTE_LAYERS.numLayers,
      },
    },
    optim: {
      lr: f.lr,
      minLr: f.min_lr,
      warmupSteps: f.warmup_steps,
      adamBeta1: f.adam_beta1,
      adamBeta2: f.adam_beta2,
      adamEps: f.adam_eps,
      weightDecay: f.weight_decay,
      weightDecayAll: f.weight_decay_all,
      clipGrad: f.clip_grad,
    },
    loss: {
      kind: f.kd_loss as DistillationRecipe['loss']['kind'],
      temperature: f.temperature,
      scaleByTemperatureSquared: f.temperature_scaling,
      kdRatio: f.kd_ratio,
      jsdBeta: f.jsd_beta,
      skewLambda: f.skew_lambda,
      chunkSize: f.loss_chunk,
    },
    // teacherDevices is src/parallel/placement.ts's PlacementConfig field (read with teacherDevicesOf).
    parallel: {
      numNodes: f.num_nodes,
      devicesPerNode: f.devices,
      tpSize: f.tp_size,
      ppSize: f.pp_size,
      cpSize: f.cp_size,
      teacherDevices: f.teacher_devices,
      makeVocabSizeDivisibleBy: f.make_vocab_size_divisible_by,
      overlapGradReduce: f.overlap_grad_reduce,
    },
  } as const;
  if (kind === 'pretrain') return pretrainRecipe(common);
  return distillationRecipe({ ...common, teacherPath: f.teacher_path, teacherCache: f.teacher_cache });
}
