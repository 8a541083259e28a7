/**
 * Plain next-token training: the distillation pipeline with no teacher stage, so the loss is cross-entropy. It
 * trains the project's bundled teacher, and the CE-only baseline that the KD student is compared to.
 */
import type { Observable } from 'rxjs';
import type { CausalLM } from '../src/model/causalLM.ts';
import type { StepResult } from '../src/train/batch.ts';
import type { SampleSource } from '../operators/readBatches.ts';
import { distillPipeline } from './distill.ts';
import type { TrainingContext } from './context.ts';

export function pretrainPipeline(model: CausalLM, source: SampleSource, c: TrainingContext): Observable<StepResult> {
  return distillPipeline(model, null, source, c);
}
