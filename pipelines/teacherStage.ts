/**
 * The teacher of a run, in the form the pipeline takes it: its stage. Online (the frozen teacher loaded here,
 * `teacherTargets`), from its cache (`cachedTeacherTargets`, the teacher never loaded), on a worker of its own
 * (`RemoteTeacher.stage()`), or none (pretraining: the loss is the CE alone).
 */
import { loadModel, readModelConfig } from '../src/checkpoint/load.ts';
import { hashModelFiles } from '../src/checkpoint/save.ts';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { DistillationRecipe } from '../src/recipe/config.ts';
import { TeacherCache } from '../src/io/teacherCache.ts';
import { checkCacheForRun } from '../src/cache/compatibility.ts';
import type { DataSources } from '../src/train/dataSources.ts';
import { alignVocabularies } from '../src/train/vocabularyCheck.ts';
import type { RemoteTeacher } from '../src/parallel/remoteTeacher.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { cachedTeacherTargets } from '../operators/cachedTeacherTargets.ts';
import type { OperatorFunction } from 'rxjs';
import type { TeacherBatch, TokenBatch } from '../src/train/batch.ts';

/** Where the teacher's targets come from; null when there is no teacher (pretraining: the loss is CE alone). */
export type TeacherStage = OperatorFunction<TokenBatch, TeacherBatch> | null;

export interface RunTeacher {
  stage: TeacherStage;
  /** The frozen teacher when it runs in this process (validation uses it too); null otherwise. */
  model: CausalLM | null;
  /** The teacher cache's id, which a checkpoint's fingerprint records instead of the teacher's hash. */
  cacheId?: string;
  /** Frees the teacher's weights or the cache (after the stream has ended). */
  close(): void;
}

export async function openTeacher(
  recipe: DistillationRecipe,
  student: CausalLM,
  sources: DataSources,
  log: (line: string) => void,
  remote?: RemoteTeacher,
): Promise<RunTeacher> {
  if (recipe.kind !== 'distill') return { stage: null, model: null, close: () => {} };
  if (recipe.teacherCache) {
    const cache = TeacherCache.open(recipe.teacherCache);
    const t = recipe.trainer;
    log(
      checkCacheForRun(cache.fingerprint, {
        cacheDir: cache.dir,
        dataFingerprint: sources.fingerprint,
        data: { dataPaths: recipe.data.dataPaths, split: recipe.data.split, seed: recipe.data.seed },
        seqLength: recipe.data.seqLength,
        studentVocab: student.config.vocabSize,
        samplesNeeded: Math.min(t.maxSteps * t.globalBatchSize, sources.train.numSamples),
        loss: recipe.loss,
        teacherPath: recipe.teacherPath,
        teacherSha256: recipe.teacherPath ? hashModelFiles(recipe.teacherPath) : undefined,
      }),
    );
    const stage = cachedTeacherTargets(cache, { numSamples: sources.train.numSamples, loss: recipe.loss, studentVocab: student.config.vocabSize });
    return {
      stage,
      model: null,
      cacheId: cache.id,
      close: () => {
        stage.release();
        cache.close();
      },
    };
  }
  if (!recipe.teacherPath) return { stage: null, model: null, close: () => {} };
  if (remote) {
    log(alignVocabularies(readModelConfig(recipe.teacherPath), student.config, recipe));
    return { stage: remote.stage(), model: null, close: () => {} };
  }
  const model = await loadModel(recipe.teacherPath, { trainable: false });
  log(alignVocabularies(model.config, student.config, recipe));
  return { stage: teacherTargets(model), model, close: () => model.dispose() };
}
