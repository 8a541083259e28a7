/**
 * Evaluation: the student's next-token cross-entropy, the teacher's, and the KD divergence between them (at the
 * run's temperature, without the τ² factor), each a token-weighted mean over the data. The same read and forward
 * stages as training; logits are formed chunk by chunk, so memory stays O(chunk × vocab).
 */
import { concatMap, lastValueFrom, reduce } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { KdLossOptions } from '../src/losses/types.ts';
import { logSoftmax, divergenceFromLogProbs } from '../src/losses/divergences.ts';
import { tokenCrossEntropy } from '../src/losses/crossEntropy.ts';
import { lossChunkRows } from '../src/losses/chunkedKd.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { disposeBatch, type TokenBatch } from '../src/train/batch.ts';
import { ConfigError } from '../src/errors.ts';

export interface EvaluationOptions extends KdLossOptions {
  seqLength: number;
  microBatchSize: number;
  /** Micro-batches to evaluate; all samples when absent. */
  limitBatches?: number;
  chunkSize: number;
}

export interface EvaluationResult {
  studentCe: number;
  teacherCe?: number;
  kdLoss?: number;
  tokens: number;
}

interface Sums {
  ce: number;
  tce: number;
  kd: number;
  tokens: number;
}

export async function evaluateOn(student: CausalLM, teacher: CausalLM | null, source: SampleSource, o: EvaluationOptions): Promise<EvaluationResult> {
  if (source.numSamples === 0)
    throw new ConfigError(`evaluate: the data holds no sample of seq_length + 1 = ${o.seqLength + 1} tokens; use a shorter seq_length or more data`);
  const available = Math.floor(source.numSamples / o.microBatchSize);
  const batches = Math.max(1, Math.min(o.limitBatches ?? available, available));
  const stream = readBatches(source, {
    seqLength: o.seqLength,
    globalBatchSize: o.microBatchSize,
    microBatchSize: o.microBatchSize,
    startStep: 0,
    maxSteps: batches,
  });
  const sums = await lastValueFrom(
    stream.pipe(
      concatMap((b) => evaluateBatch(student, teacher, b, o)),
      reduce((a: Sums, s: Sums) => ({ ce: a.ce + s.ce, tce: a.tce + s.tce, kd: a.kd + s.kd, tokens: a.tokens + s.tokens }), {
        ce: 0,
        tce: 0,
        kd: 0,
        tokens: 0,
      }),
    ),
  );
  const n = Math.max(1, sums.tokens);
  return {
    studentCe: sums.ce / n,
    teacherCe: teacher ? sums.tce / n : undefined,
    kdLoss: teacher ? sums.kd / n : undefined,
    tokens: sums.tokens,
  };
}

/** Sums (not means) over one micro-batch, so that batches combine by token count. */
async function evaluateBatch(student: CausalLM, teacher: CausalLM | null, b: TokenBatch, o: EvaluationOptions): Promise<Sums> {
  const out = tf.tidy(() => {
    const flat = (h: tf.Tensor3D): tf.Tensor2D => h.reshape([h.shape[0] * h.shape[1], h.shape[2]]);
    const hs = flat(student.hidden(b.inputIds));
    const ht = teacher ? flat(teacher.hidden(b.inputIds)) : null;
    const labels = b.labels.reshape([-1]) as tf.Tensor1D;
    const mask = b.lossMask.reshape([-1]) as tf.Tensor1D;
    const n = hs.shape[0];
    const chunkSize = lossChunkRows(o.chunkSize, student.config.vocabSize);
    const vocab = teacher ? Math.min(teacher.config.vocabSize, student.config.vocabSize) : student.config.vocabSize;
    let ce = tf.scalar(0);
    let tce = tf.scalar(0);
    let kd = tf.scalar(0);
    for (let start = 0; start < n; start += chunkSize) {
      const size = Math.min(chunkSize, n - start);
      const m = tf.slice(mask, [start], [size]);
      const y = tf.slice(labels, [start], [size]) as tf.Tensor1D;
      const zs = tf.matMul(tf.slice(hs, [start, 0], [size, -1]), student.headWeight(), false, true) as tf.Tensor2D;
      ce = tf.add(ce, tf.sum(tf.mul(tokenCrossEntropy(zs, y), m)));
      if (teacher && ht) {
        const zt = tf.matMul(tf.slice(ht, [start, 0], [size, -1]), teacher.headWeight(), false, true) as tf.Tensor2D;
        tce = tf.add(tce, tf.sum(tf.mul(tokenCrossEntropy(zt, y), m)));
        const lt = logSoftmax(tf.slice(zt, [0, 0], [size, vocab]) as tf.Tensor2D, o.temperature);
        const ls = logSoftmax(tf.slice(zs, [0, 0], [size, vocab]) as tf.Tensor2D, o.temperature);
        kd = tf.add(kd, tf.sum(tf.mul(divergenceFromLogProbs(lt, ls, o), m)));
      }
    }
    return tf.stack([ce, tce, kd, tf.sum(mask)]);
  });
  disposeBatch(b);
  const [ce, tce, kd, tokens] = await out.data();
  out.dispose();
  return { ce, tce, kd, tokens };
}
