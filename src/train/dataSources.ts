/**
 * The run's data: the train and validation sample streams over --data_paths with --split, and a fingerprint of
 * the data (paths, weights, document ranges, sizes) that a checkpoint records, so a resume on other data is refused.
 */
import { createHash } from 'node:crypto';
import { createSampleSource, noSamplesMessage, type SampleSource } from '../data/sampleSource.ts';
import { ConfigError } from '../errors.ts';
import type { DataConfig, DistillationRecipe } from '../recipe/config.ts';

export interface DataSources {
  train: SampleSource;
  /** Null when the split gives validation no documents. */
  valid: SampleSource | null;
  fingerprint: string;
}

export function openSampleSource(d: DataConfig, splitName: 'train' | 'valid' | 'test', vocabSize: number): SampleSource {
  return createSampleSource({ dataPaths: d.dataPaths, seqLength: d.seqLength, split: d.split, splitName, seed: d.seed, vocabSize });
}

export function openDataSources(recipe: DistillationRecipe, vocabSize: number): DataSources {
  const train = openSampleSource(recipe.data, 'train', vocabSize);
  if (train.numSamples === 0) {
    // Built before close(): it reads the source's token counts, so the message says what the split holds, as evaluate's.
    const message = noSamplesMessage(train, { split: recipe.data.split, splitName: 'train' });
    train.close();
    throw new ConfigError(message);
  }
  let valid: SampleSource | null = openSampleSource(recipe.data, 'valid', vocabSize);
  if (valid.numSamples === 0) {
    valid.close();
    valid = null;
  }
  const fingerprint = createHash('sha256')
    .update(JSON.stringify({ components: train.components, split: recipe.data.split, seed: recipe.data.seed }))
    .digest('hex');
  return { train, valid, fingerprint };
}
