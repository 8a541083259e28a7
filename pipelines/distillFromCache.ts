/**
 * Distillation from a teacher cache (`distill cache-teacher`, then `distill run --teacher_cache DIR`): the
 * distillation pipeline with the teacher stage replaced by a lookup of its cached outputs by sample index.
 */
import { finalize, type Observable } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult } from '../src/train/batch.ts';
import type { TeacherCache } from '../src/io/teacherCache.ts';
import type { TopKLoss } from '../src/cache/targets.ts';
import type { SampleSource } from '../operators/readBatches.ts';
import { cachedTeacherTargets } from '../operators/cachedTeacherTargets.ts';
import { distillPipeline } from './distill.ts';
import type { TrainingContext } from './context.ts';

export function distillFromCachePipeline(
  student: CausalLM,
  cache: TeacherCache,
  source: SampleSource,
  c: TrainingContext,
  o: { topk?: TopKLoss } = {},
): Observable<StepResult> {
  const teacher = cachedTeacherTargets(cache, { numSamples: source.numSamples, loss: c.loss, studentVocab: student.config.vocabSize, topk: o.topk });
  return distillPipeline(student, teacher, source, c).pipe(finalize(() => teacher.release()));
}
