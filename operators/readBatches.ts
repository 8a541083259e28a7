/**
 * The pipeline's source: training samples (seq_length + 1 token windows) read by global sample index and grouped
 * into micro-batches, each emitted as an Arrow record batch plus the tensors made from it.
 *
 * The source waits for a credit before each micro-batch (see Credits), which is what keeps a slow stage from
 * being buried in batches. Reading by index means a resumed run starts exactly at its saved data position.
 */
import { Observable } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type { TokenBatch } from '../src/train/batch.ts';
import type { Credits } from '../src/train/credits.ts';
import type { SampleSource as DataSampleSource } from '../src/data/sampleSource.ts';
import { tokenRecordBatch, tokenRecordIds } from '../src/train/tokenRecords.ts';
import { inStage } from './stageErrors.ts';

/**
 * Random access to training samples, each seq_length + 1 token ids long: the data's SampleSource
 * (src/data/sampleSource.ts), of which this stage needs only the count and the samples.
 */
export type SampleSource = Pick<DataSampleSource, 'numSamples' | 'sample'>;

export interface ReadBatchesOptions {
  seqLength: number;
  globalBatchSize: number;
  microBatchSize: number;
  /** First optimizer step to read for (a resumed run's saved step). */
  startStep: number;
  /** Steps to read; the stream completes after the last one. */
  maxSteps: number;
  credits?: Credits;
  /** Data-parallel rank and size: each rank reads its own slice of every global batch. */
  dpRank?: number;
  dpSize?: number;
}

export function readBatches(source: SampleSource, o: ReadBatchesOptions): Observable<TokenBatch> {
  const dpSize = o.dpSize ?? 1;
  const dpRank = o.dpRank ?? 0;
  const perRank = o.globalBatchSize / dpSize;
  const numMicro = perRank / o.microBatchSize;
  const width = o.seqLength + 1;
  return new Observable<TokenBatch>((subscriber) => {
    let stopped = false;
    (async () => {
      for (let step = o.startStep; step < o.maxSteps && !stopped; step++) {
        for (let micro = 0; micro < numMicro && !stopped; micro++) {
          // A closed credit pool means "stop reading": complete, so the stages downstream drain and finish. A stop
          // in the middle of a global batch still reads the rest of it (fewer than numMicro micro-batches, without
          // credits): backward takes whatever arrives for a step as the step, so a stop must end on a step's edge.
          if (o.credits && !(await o.credits.acquire()) && micro === 0) {
            subscriber.complete();
            return;
          }
          if (stopped) return;
          const firstSample = step * o.globalBatchSize + dpRank * perRank + micro * o.microBatchSize;
          const position = { step, micro, numMicro, firstSample };
          const flat = new Int32Array(o.microBatchSize * width);
          inStage('readBatches', position, () => {
            for (let r = 0; r < o.microBatchSize; r++) {
              const s = source.sample((firstSample + r) % source.numSamples);
              if (s.length !== width) {
                throw new RangeError(`sample ${firstSample + r} has ${s.length} tokens, expected seq_length + 1 = ${width}`);
              }
              flat.set(s, r * width);
            }
          });
          const records = tokenRecordBatch(flat, o.microBatchSize, width);
          const tokens = o.microBatchSize * o.seqLength;
          subscriber.next(tokenBatchFromRecords(records, position, tokens * numMicro * dpSize));
        }
      }
      subscriber.complete();
    })().catch((e: unknown) => subscriber.error(e));
    return () => {
      stopped = true;
    };
  });
}

/** Tensors for one micro-batch of windows: inputs are the first seq ids, labels the last seq; every position counts. */
export function tokenBatchFromRecords(records: TokenBatch['records'], position: TokenBatch['position'], globalBatchTokens: number): TokenBatch {
  const { ids, rows, width } = tokenRecordIds(records);
  const seq = width - 1;
  const windows = tf.tensor2d(ids, [rows, width], 'int32');
  const [inputIds, labels] = tf.tidy(() => [tf.slice(windows, [0, 0], [rows, seq]) as tf.Tensor2D, tf.slice(windows, [0, 1], [rows, seq]) as tf.Tensor2D]);
  windows.dispose();
  return {
    position,
    records,
    inputIds,
    labels,
    lossMask: tf.ones([rows, seq], 'float32') as tf.Tensor2D,
    tokens: rows * seq,
    globalBatchTokens,
  };
}
