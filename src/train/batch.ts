/**
 * The values that flow between the pipeline's operators, named for what they carry.
 *
 * tfjs differentiates a function, not tensors computed earlier, so the student's stages hand on closures:
 * `attachStudent` adds the forward function, `klLoss` wraps it in the loss, and `backward` runs the whole
 * composition under one gradient tape and sums each global batch's gradients for `optimizerStep`. Tensors on a
 * batch belong to the batch; the stage that drops a batch disposes them (see `disposeBatch`).
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { RecordBatch } from 'apache-arrow';
import type { SparseTargets } from '../losses/sparseTargets.ts';

/** Where a micro-batch sits in the run; errors and checkpoints name it. */
export interface BatchPosition {
  /** Optimizer step this micro-batch contributes to (0-based). */
  step: number;
  /** Index of the micro-batch within its global batch, and how many there are. */
  micro: number;
  numMicro: number;
  /** Index of the first sample in the data stream (global sample index). */
  firstSample: number;
}

/** A micro-batch of token windows, as read from the data. */
export interface TokenBatch {
  position: BatchPosition;
  /** The same rows as an Arrow record batch (`tokens`: FixedSizeList<Int32>[seq + 1]), as they came off the shards. */
  records: RecordBatch;
  /** [mbs, seq] input ids and next-token labels. */
  inputIds: tf.Tensor2D;
  labels: tf.Tensor2D;
  /** [mbs, seq] float32: 1 where the position counts in the loss. */
  lossMask: tf.Tensor2D;
  /** Loss-counted positions in this micro-batch and in its whole global batch (for token-weighted means). */
  tokens: number;
  globalBatchTokens: number;
}

/** What the teacher contributes: its final hidden states (the head is applied chunk by chunk in the loss). */
export interface TeacherTargets {
  kind: 'hidden';
  /** [mbs·seq, teacher hidden] */
  hidden: tf.Tensor2D;
  /** [teacher vocab, teacher hidden]; owned by the teacher model, never disposed with the batch. */
  head: tf.Tensor2D;
  /** The same head transposed, [teacher hidden, teacher vocab], when the teacher caches it (frozen); owned by the teacher. */
  headTransposed?: tf.Tensor2D;
}

/** Sparse teacher targets read from a cache: per position, K ids with log-probabilities (top-K) or counts (sampled). */
export interface SparseTeacherTargets {
  kind: 'sparse';
  targets: SparseTargets;
}

export interface TeacherBatch extends TokenBatch {
  teacher?: TeacherTargets | SparseTeacherTargets;
}

/** The student's forward pass, to be run under the tape by `backward`. */
export interface ForwardBatch extends TeacherBatch {
  /** Returns the student's final hidden states [mbs·seq, hidden]. */
  studentForward: () => tf.Tensor2D;
  /** The student's output projection [vocab, hidden] (a variable; differentiated, never disposed here). */
  studentHead: () => tf.Tensor2D;
}

/** The loss of one micro-batch, already weighted by its share of the global batch's tokens. */
export interface LossParts {
  /** What is differentiated: this micro-batch's share of the global batch loss. */
  total: tf.Scalar;
  /** Unweighted masked means over this micro-batch, for logging. */
  kd?: tf.Scalar;
  ce?: tf.Scalar;
}

export interface LossBatch extends ForwardBatch {
  loss: () => LossParts;
}

/** A global batch's loss, summed on the host over the micro-batches that made it (read back once per step). */
export interface StepLossSums {
  /** The differentiated loss: the token-weighted mean over the global batch. */
  loss: number;
  /** Σ over micro-batches of the KD (and CE) term's mean × the micro-batch's tokens; absent when the loss has no such term. */
  kd?: number;
  ce?: number;
  /** Loss-counted token positions. */
  tokens: number;
}

/** What the step is given: one global batch's gradients, by parameter name. The step disposes them. */
export interface StepGradients {
  step: number;
  grads: Map<string, tf.Tensor>;
  sums: StepLossSums;
  /** The first sample of the global batch, named in a NaN error. */
  firstSample: number;
  /** performance.now() when the step's first micro-batch started, for the step's time. */
  startedAt: number;
  /** The gradients' global norm when backward read it with the loss (its `gradNorm` option); a single worker's optimizerStep clips by it. */
  gradNorm?: number;
}

/** A global batch's gradients on their way from `backward` to `optimizerStep`. */
export interface GradientBatch extends StepGradients {
  /**
   * optimizerStep calls this once the step is taken and the stages after it are done with it; backward waits
   * for it, so the next step's gradients are taken at the weights this step produced.
   */
  stepTaken: () => void;
}

/** One optimizer step's outcome, emitted by `optimizerStep` once per global batch. */
export interface StepResult {
  step: number;
  loss: number;
  kdLoss?: number;
  ceLoss?: number;
  gradNorm: number;
  lr: number;
  tokens: number;
  /** Samples consumed so far (the data position to resume from). */
  samplesSeen: number;
  /** True when the step was skipped because the loss or gradients were not finite. */
  skipped: boolean;
  elapsedMs: number;
}

export function disposeBatch(b: TeacherBatch): void {
  b.inputIds.dispose();
  b.labels.dispose();
  b.lossMask.dispose();
  if (b.teacher?.kind === 'hidden') b.teacher.hidden.dispose();
  if (b.teacher?.kind === 'sparse') {
    const t = b.teacher.targets;
    t.ids.dispose();
    if (t.kind === 'sampled') {
      t.counts.dispose();
      t.logProbs?.dispose();
    } else {
      t.logProbs.dispose();
    }
  }
}
