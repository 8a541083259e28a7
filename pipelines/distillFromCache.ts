/**
 * Distillation from a teacher cache (`distill cache-teacher`, then `distill run --teacher_cache DIR`): the online
 * pipeline with the teacher's forward pass replaced by a lookup of its cached outputs by sample index. Everything
 * after the teacher's stage is the same: the student's forward, the KD loss, back-propagation, checkpoints.
 */
import { finalize, type Observable } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult } from '../src/train/batch.ts';
import type { TeacherCache } from '../src/io/teacherCache.ts';
import type { TopKLoss } from '../src/cache/targets.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { cachedTeacherTargets } from '../operators/cachedTeacherTargets.ts';
import { studentForward } from '../operators/studentForward.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { validationTap } from '../operators/validationTap.ts';
import type { TrainingContext } from './context.ts';

export function distillFromCachePipeline(student: CausalLM, cache: TeacherCache, source: SampleSource, c: TrainingContext, o: { topk?: TopKLoss } = {}): Observable<StepResult> {
  const teacher = cachedTeacherTargets(cache, { numSamples: source.numSamples, loss: c.loss, studentVocab: student.config.vocabSize, topk: o.topk });
  return readBatches(source, c.read).pipe(
    teacher,
    studentForward(student),
    klLoss(c.loss),
    backward(student, c.backward),
    validationTap(c.validation),
    metricsTap(c.sinks),
    checkpointSink(c.checkpoint),
    finalize(() => teacher.release()),
  );
}
