/**
 * Online distillation, NeMo's four steps as a stream:
 *   1. load the student and the teacher checkpoints            (runner.ts: loadModels)
 *   2. replace the loss with the KL divergence of their logits  (klLoss)
 *   3. run both forward, back-propagate through the student only (teacherLogits, studentForward, backward)
 *   4. save only the student                                    (checkpointSink, and the runner's final save)
 * Each stage is an RxJS operator from `operators/`; a user composes their own pipeline the same way. The metrics
 * are logged before the checkpoint is written, so a crash between the two only repeats a step's record on resume
 * (the log is truncated to the checkpoint), never loses it; the runner's StepBarrier holds backward meanwhile.
 */
import type { Observable } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult } from '../src/train/batch.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { teacherLogits } from '../operators/teacherLogits.ts';
import { studentForward } from '../operators/studentForward.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { validationTap } from '../operators/validationTap.ts';
import type { TrainingContext } from './context.ts';

export function distillPipeline(student: CausalLM, teacher: CausalLM, source: SampleSource, c: TrainingContext): Observable<StepResult> {
  return readBatches(source, c.read).pipe(
    teacherLogits(teacher),
    studentForward(student),
    klLoss(c.loss),
    backward(student, c.backward),
    validationTap(c.validation),
    metricsTap(c.sinks),
    checkpointSink(c.checkpoint),
  );
}
