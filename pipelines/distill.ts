/**
 * Distillation, NeMo's four steps as one stream:
 *   1. load the student and the teacher checkpoints             (src/train/prepareRun.ts, before the stream starts)
 *   2. replace the loss with the KL divergence of their logits   (klLoss)
 *   3. run both forward, back-propagate through the student only (teacher stage, attachStudent, backward,
 *                                                                  optimizerStep)
 *   4. save only the student                                     (checkpointSink, and the final save in prepareRun)
 * The teacher stage is what differs between the ways of distilling: the teacher online (`teacherTargets`), its
 * cached outputs (`cachedTeacherTargets`), a teacher on its own worker (`RemoteTeacher.stage()`), or none at all
 * (`null`: pretraining on next-token CE). Every stage is an RxJS operator from `operators/`; a user composes their
 * own pipeline the same way. Metrics are logged before the checkpoint is written, so a crash between the two only
 * repeats a step's record on resume (the log is truncated to the checkpoint), never loses it.
 */
import type { Observable, OperatorFunction } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult, TeacherBatch, TokenBatch } from '../src/train/batch.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { teacherTargets } from '../operators/teacherTargets.ts';
import { attachStudent } from '../operators/attachStudent.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { optimizerStep } from '../operators/optimizerStep.ts';
import { validationTap } from '../operators/validationTap.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';
import type { TrainingContext } from './context.ts';

/** Where the teacher's targets come from; null when there is no teacher (pretraining: the loss is CE alone). */
export type TeacherStage = OperatorFunction<TokenBatch, TeacherBatch> | null;

/**
 * @param teacherStage the teacher's stage (a frozen CausalLM is taken as `teacherTargets(teacher)`, the 0.1 form)
 */
export function distillPipeline(student: CausalLM, teacherStage: TeacherStage | CausalLM, source: SampleSource, c: TrainingContext): Observable<StepResult> {
  const teacher = isModel(teacherStage) ? teacherTargets(teacherStage) : teacherStage;
  const toTeacherBatch: OperatorFunction<TokenBatch, TeacherBatch> = teacher ?? ((batches) => batches);
  return readBatches(source, c.read).pipe(
    toTeacherBatch,
    attachStudent(student),
    klLoss(teacher ? c.loss : { ...c.loss, kdRatio: 0 }),
    backward(student, { credits: c.read.credits }),
    optimizerStep(c.step),
    validationTap(c.validation),
    metricsTap(c.sinks),
    checkpointSink(c.checkpoint),
  );
}

function isModel(t: TeacherStage | CausalLM): t is CausalLM {
  return t !== null && typeof t === 'object';
}
