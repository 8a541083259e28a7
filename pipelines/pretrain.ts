/**
 * Plain next-token training: the distillation pipeline with the teacher stage left out and the loss reduced to
 * cross-entropy. It trains the project's bundled teacher, and the CE-only baseline that the KD student is compared to.
 */
import type { Observable } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult } from '../src/train/batch.ts';
import { readBatches, type SampleSource } from '../operators/readBatches.ts';
import { studentForward } from '../operators/studentForward.ts';
import { klLoss } from '../operators/klLoss.ts';
import { backward } from '../operators/backward.ts';
import { checkpointSink } from '../operators/checkpointSink.ts';
import { metricsTap } from '../operators/metricsTap.ts';
import { validationTap } from '../operators/validationTap.ts';
import type { TrainingContext } from './context.ts';

export function pretrainPipeline(model: CausalLM, source: SampleSource, c: TrainingContext): Observable<StepResult> {
  return readBatches(source, c.read).pipe(
    studentForward(model),
    klLoss({ ...c.loss, kdRatio: 0 }),
    backward(model, c.backward),
    validationTap(c.validation),
    metricsTap(c.sinks),
    checkpointSink(c.checkpoint),
  );
}
