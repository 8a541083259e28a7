/**
 * --seq_length against the models' position ranges, read from their config.json (not their weights), so that a
 * run refuses a sequence longer than the student or the teacher was made for before anything loads: GPT-2 has no
 * position row past n_positions, and a Llama's RoPE would run at positions it never saw.
 */
import { join } from 'node:path';
import { CONFIG_FILE, readModelConfig } from '../checkpoint/load.ts';
import { checkSequenceLength } from '../model/config.ts';
import type { DistillationRecipe } from '../recipe/config.ts';

/** Refuses (ConfigError) a --seq_length past the student's or the teacher's position range, naming its config.json. */
export function checkModelsFitSequence(recipe: DistillationRecipe): void {
  const models: [string, string | undefined][] = [
    ['the student', recipe.studentPath],
    ['the teacher', recipe.kind === 'distill' ? recipe.teacherPath : undefined],
  ];
  for (const [role, dir] of models) {
    if (dir !== undefined) checkSequenceLength(readModelConfig(dir), recipe.data.seqLength, role, join(dir, CONFIG_FILE));
  }
}
