/**
 * The recipe: one plain, typed object that says everything a run does, in the spirit of NeMo-Run's recipes.
 * `distillationRecipe({...})` fills NeMo's defaults and returns it; a user overrides fields in code; `run(recipe)`
 * executes it. The CLI is a thin layer that turns flags into the same object.
 */
import type { BackendChoice } from '../backend/select.ts';
import type { Precision } from '../backend/webgpu/mixedPrecisionMatMul.ts';
import type { RecomputeGranularity } from '../model/attention.ts';
import type { RecomputeLayers } from '../model/base.ts';
import { DEFAULT_KD_LOSS, type KdLossOptions } from '../losses/types.ts';
import type { NanPolicy } from '../train/optimizerStep.ts';

export interface DataConfig {
  /** `"w1 prefix1 w2 prefix2"` or a list of prefixes / Arrow shard directories. */
  dataPaths: string;
  seqLength: number;
  split: string;
  seed: number;
}

export interface TrainerConfig {
  maxSteps: number;
  globalBatchSize: number;
  microBatchSize: number;
  valCheckInterval: number;
  limitValBatches: number;
  logInterval: number;
  saveInterval: number;
  /** Micro-batches allowed between the data source and the optimizer step. */
  inFlight: number;
  nanPolicy: NanPolicy;
  /** NeMo's trainer.precision: '32', or 'bf16-mixed' / '16-mixed' (16-bit tensor-core matmuls on cuda and webgpu; see docs/backends.md). */
  precision: Precision;
  /** NeMo's model.recompute_granularity: null keeps every activation, 'selective' recomputes core attention in the backward, 'full' whole layers. */
  recomputeGranularity: RecomputeGranularity;
  /** Under 'full': NeMo's recompute_method and recompute_num_layers (default uniform, 1). */
  recomputeLayers?: RecomputeLayers;
}

export interface OptimConfig {
  lr: number;
  minLr: number;
  warmupSteps: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  weightDecay: number;
  weightDecayAll: boolean;
  clipGrad: number;
}

/** The losses' own `alpha` is not a field here: α has one name in the recipe, `kdRatio` (`--kd_ratio`). */
export interface LossConfig extends Omit<KdLossOptions, 'alpha'> {
  /** α in (1 − α)·CE + α·KD; 1 is pure KD, as NeMo. */
  kdRatio: number;
  /** Token positions per chunk of the vocabulary-wide loss (memory grows with chunk × vocab). */
  chunkSize: number;
}

export interface ParallelConfig {
  numNodes: number;
  devicesPerNode: number;
  tpSize: number;
  ppSize: number;
  cpSize: number;
  /** Under TP the vocabulary rows pad to a multiple of this × tp (NeMo's make_vocab_size_divisible_by, default 128). */
  makeVocabSizeDivisibleBy?: number;
  /**
   * Data parallelism over NCCL: start each gradient bucket's all-reduce as soon as the backward pass has finished
   * it, on a second stream beside the backward's later kernels (NeMo's ddp.overlap_grad_reduce); default on. Off,
   * the buckets go after the backward pass. The ring of the CPU backends always goes after.
   */
  overlapGradReduce?: boolean;
}

export interface DistillationRecipe {
  kind: 'distill' | 'pretrain';
  name: string;
  logDir: string;
  studentPath: string;
  /** Absent for pretraining. */
  teacherPath?: string;
  /** Distil from a precomputed teacher cache instead of running the teacher. */
  teacherCache?: string;
  data: DataConfig;
  trainer: TrainerConfig;
  optim: OptimConfig;
  loss: LossConfig;
  parallel: ParallelConfig;
  backend: BackendChoice;
}

const { alpha: _alpha, ...KD_LOSS_DEFAULTS } = DEFAULT_KD_LOSS;

/** NeMo 2.0's defaults for distillation (lr 3e-5 → 2e-7 cosine, 50 warm-up steps, clip 1.0, pure KD at τ = 1). */
export const DEFAULTS = {
  data: { dataPaths: '', seqLength: 2048, split: '99,1,0', seed: 1234 },
  trainer: {
    maxSteps: 100,
    globalBatchSize: 8,
    microBatchSize: 1,
    valCheckInterval: 100,
    limitValBatches: 32,
    logInterval: 1,
    saveInterval: 100,
    inFlight: 4,
    nanPolicy: 'skip',
    precision: '32',
    recomputeGranularity: null,
  },
  optim: {
    lr: 3e-5,
    minLr: 2e-7,
    warmupSteps: 50,
    adamBeta1: 0.9,
    adamBeta2: 0.95,
    adamEps: 1e-8,
    weightDecay: 0.01,
    weightDecayAll: false,
    clipGrad: 1.0,
  },
  loss: { ...KD_LOSS_DEFAULTS, kdRatio: 1.0, chunkSize: 0 },
  parallel: { numNodes: 1, devicesPerNode: 1, tpSize: 1, ppSize: 1, cpSize: 1, makeVocabSizeDivisibleBy: 128 },
} satisfies Omit<DistillationRecipe, 'kind' | 'name' | 'logDir' | 'studentPath' | 'backend'>;

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

export interface RecipeArgs extends DeepPartial<Omit<DistillationRecipe, 'kind'>> {
  studentPath: string;
  name: string;
  dir?: string;
}

/** A distillation recipe with NeMo's defaults; every field can be overridden here or on the returned object. */
export function distillationRecipe(a: RecipeArgs & { teacherPath?: string; teacherCache?: string }): DistillationRecipe {
  return build('distill', a);
}

/** Plain next-token training (the KD stage left out): trains a teacher, or the CE baseline of a comparison. */
export function pretrainRecipe(a: RecipeArgs): DistillationRecipe {
  const r = build('pretrain', a);
  r.loss.kdRatio = 0;
  return r;
}

function build(kind: DistillationRecipe['kind'], a: RecipeArgs & { teacherPath?: string; teacherCache?: string }): DistillationRecipe {
  return {
    kind,
    name: a.name,
    logDir: a.dir ?? a.logDir ?? 'runs',
    studentPath: a.studentPath,
    teacherPath: a.teacherPath,
    teacherCache: a.teacherCache,
    data: { ...DEFAULTS.data, ...a.data },
    trainer: { ...DEFAULTS.trainer, ...a.trainer } as TrainerConfig,
    optim: { ...DEFAULTS.optim, ...a.optim },
    loss: { ...DEFAULTS.loss, ...a.loss } as LossConfig,
    parallel: { ...DEFAULTS.parallel, ...a.parallel },
    backend: a.backend ?? 'auto',
  };
}
