/**
 * Teacher and student vocabularies. Qwen-style pairs differ only in padding rows (152,064 vs 151,936): the loss
 * aligns them on the shared ids [0, min(V_t, V_s)) and says so. Sizes that differ by more than padding usually
 * mean different tokenizers, which no alignment can fix.
 */
import { ConfigError } from '../errors.ts';
import type { ModelConfig } from '../model/config.ts';

/** Padding a vocabulary to a multiple of 128 (or of TP × 128) differs by less than this. */
const MAX_PADDING_DIFFERENCE = 1024;

export function alignVocabularies(teacher: ModelConfig, student: ModelConfig, where: { teacherPath?: string; studentPath: string }): string {
  const vt = teacher.vocabSize;
  const vs = student.vocabSize;
  if (vt === vs) return `vocabulary: teacher and student share ${vs} ids`;
  if (Math.abs(vt - vs) > MAX_PADDING_DIFFERENCE) {
    throw new ConfigError(
      `teacher (${where.teacherPath}) has ${vt} vocabulary ids and student (${where.studentPath}) ${vs}: more than padding apart, ` +
        'so they likely use different tokenizers. Distil between models that share a tokenizer.',
    );
  }
  return `vocabulary: teacher ${vt} ids, student ${vs}; the loss uses the ${Math.min(vt, vs)} shared ids (the rest is padding)`;
}
