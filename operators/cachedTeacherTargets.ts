/**
 * The teacher's stage when its outputs were cached by `distill cache-teacher`: instead of running the teacher, it
 * looks up each row's global sample index in the cache (readBatches reads sample i mod the epoch, and so does this)
 * and hands on the cached targets in the form the loss takes (src/cache/targets.ts). The teacher is never loaded.
 */
import { map, type OperatorFunction } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { TeacherBatch, TokenBatch } from '../src/train/batch.ts';
import type { KdLossOptions } from '../src/losses/types.ts';
import type { TeacherCache } from '../src/io/teacherCache.ts';
import { teacherTargetsFromRows, type TopKLoss } from '../src/cache/targets.ts';

export interface CachedTeacherTargetsOptions {
  /** Training samples per epoch of the run's source (sample indices wrap at it, as in readBatches). */
  numSamples: number;
  /** The loss the targets feed: a full cache is handed on in the cheapest exact form for it. */
  loss: Pick<KdLossOptions, 'kind' | 'temperature'>;
  studentVocab: number;
  /** How a top-K cache is used: with the ghost bucket (default) or renormalised over the K ids. */
  topk?: TopKLoss;
}

/**
 * The operator, plus `release()`: it frees the identity head that the dense form of a full cache shares between
 * batches. Call it when the whole pipeline has finished (distillFromCachePipeline does): batches still queued
 * downstream use the head after this stage's own input has completed, so the stage cannot free it itself.
 */
export type CachedTeacherTargetsOperator = OperatorFunction<TokenBatch, TeacherBatch> & { release(): void };

export function cachedTeacherTargets(cache: TeacherCache, o: CachedTeacherTargetsOptions): CachedTeacherTargetsOperator {
  const fp = cache.fingerprint;
  let identity: tf.Tensor2D | null = null;
  const eye = (): tf.Tensor2D => (identity ??= tf.eye(fp.vocabSize) as tf.Tensor2D);
  const op = map((batch: TokenBatch): TeacherBatch => {
    const rows = batch.inputIds.shape[0];
    const samples = Array.from({ length: rows }, (_, r) => (batch.position.firstSample + r) % o.numSamples);
    const teacher = teacherTargetsFromRows(cache.rowsOf(samples), fp, {
      loss: o.loss,
      studentVocab: o.studentVocab,
      topk: o.topk ?? 'topk_ghost',
      identity: eye,
      samples,
    });
    return { ...batch, teacher };
  });
  return Object.assign(op, {
    release: (): void => {
      identity?.dispose();
      identity = null;
    },
  });
}
