/** The fixture pair's training batch (input_ids and kd_mask, [2, 17]) as the pipeline's micro-batches. */
import * as tf from '@tensorflow/tfjs-core';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { tokenRecordBatch } from '../../src/train/tokenRecords.ts';
import type { TokenBatch } from '../../src/train/batch.ts';
import { fixture } from './fixtures.ts';

/** The fixture's batch, once per step: input_ids [2, 17] and kd_mask [2, 17]. */
export function fixtureBatches(steps: number, microPerStep = 1): TokenBatch[] {
  const ids = readAllSafetensors(fixture('llama-teacher', 'expected.safetensors')).get('input_ids')!;
  const mask = readAllSafetensors(fixture('kd_mask.safetensors')).get('mask')!;
  const [b, s] = ids.shape;
  let total = 0;
  for (const v of mask.data) total += v;
  const out: TokenBatch[] = [];
  const rows = b / microPerStep;
  for (let step = 0; step < steps; step++) {
    for (let micro = 0; micro < microPerStep; micro++) {
      const part = (ids.data as Int32Array).slice(micro * rows * s, (micro + 1) * rows * s);
      const m = (mask.data as Float32Array).slice(micro * rows * s, (micro + 1) * rows * s);
      out.push({
        position: { step, micro, numMicro: microPerStep, firstSample: step * b + micro * rows },
        records: tokenRecordBatch(part, rows, s),
        inputIds: tf.tensor2d(part, [rows, s], 'int32'),
        labels: tf.zeros([rows, s], 'int32') as tf.Tensor2D,
        lossMask: tf.tensor2d(m, [rows, s]),
        tokens: m.reduce((a, x) => a + x, 0),
        globalBatchTokens: total,
      });
    }
  }
  return out;
}
