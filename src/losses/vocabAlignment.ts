/**
 * Teacher and student vocabularies that differ in size. Model families pad their embedding tables past the
 * tokenizer (Qwen2.5: 152,064 rows in the 7B+ models, 151,936 in the small ones, for the same 151,665 tokens), so
 * distillation compares the two distributions on the ids both have, [0, min(V_t, V_s)), renormalising each side
 * there. That is only meaningful when id i means the same token on both sides, which checkVocabulariesAgree
 * verifies from the tokenizers. Under tensor parallelism the vocabulary-parallel loss cuts each rank's columns to
 * the same shared range and logs the same line (src/parallel/modelParallel/vocabParallelLoss.ts).
 */
import { readFileSync } from 'node:fs';
import { DistillError, FormatError } from '../errors.ts';

/** The two tokenizers give some shared id different tokens: distilling across them would be meaningless. */
export class VocabularyMismatchError extends DistillError {}

export interface SharedVocab {
  /** min(V_t, V_s): the losses use ids [0, size). */
  size: number;
  /** A line to log when the sizes differ (null when they agree). */
  note: string | null;
}

/** The shared id range of a teacher with `teacherVocab` logits and a student with `studentVocab`. */
export function sharedVocab(teacherVocab: number, studentVocab: number): SharedVocab {
  const size = Math.min(teacherVocab, studentVocab);
  if (teacherVocab === studentVocab) return { size, note: null };
  const larger = teacherVocab > studentVocab ? 'teacher' : 'student';
  return {
    size,
    note:
      `vocabulary sizes differ (teacher ${teacherVocab}, student ${studentVocab}): KD compares ids [0, ${size}) ` +
      `and ignores the ${larger}'s last ${Math.abs(teacherVocab - studentVocab)} (embedding padding in most families; ` +
      'checkVocabulariesAgree confirms the tokenizers agree on the shared ids)',
  };
}

/** id → token, from a Hugging Face tokenizer.json: `model.vocab` (token → id) plus `added_tokens` (which take ids too). */
export function readTokenizerVocab(path: string): Map<number, string> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new FormatError(path, `cannot read as JSON: ${(e as Error).message}`);
  }
  const root = json as { model?: { vocab?: unknown }; added_tokens?: unknown };
  const vocab = root.model?.vocab;
  if (vocab === null || typeof vocab !== 'object' || Array.isArray(vocab)) {
    // Unigram tokenizers store [token, score] pairs; their id is the position.
    if (Array.isArray(vocab)) {
      return new Map(vocab.map((entry, id) => [id, String((entry as unknown[])[0])]));
    }
    throw new FormatError(path, 'no model.vocab map (is this a Hugging Face tokenizer.json?)');
  }
  const out = new Map<number, string>();
  for (const [token, id] of Object.entries(vocab as Record<string, unknown>)) {
    if (typeof id !== 'number') throw new FormatError(path, `model.vocab[${JSON.stringify(token)}] is not a number`);
    out.set(id, token);
  }
  if (Array.isArray(root.added_tokens)) {
    for (const t of root.added_tokens as { id?: unknown; content?: unknown }[]) {
      if (typeof t.id === 'number' && typeof t.content === 'string') out.set(t.id, t.content);
    }
  }
  return out;
}

export type VocabSource = string | ReadonlyMap<number, string>;

function load(v: VocabSource): { map: ReadonlyMap<number, string>; name: string } {
  return typeof v === 'string' ? { map: readTokenizerVocab(v), name: v } : { map: v, name: 'vocabulary' };
}

/**
 * Checks that two vocabularies ({id → token} maps, or tokenizer.json paths) give every id in the shared range the
 * same token; throws a VocabularyMismatchError naming the first id that differs (or is present in only one).
 * The shared range is [0, sharedSize) when given (e.g. sharedVocab(...).size), else up to the smaller largest id.
 */
export function checkVocabulariesAgree(teacher: VocabSource, student: VocabSource, sharedSize?: number): void {
  const a = load(teacher);
  const b = load(student);
  // A loop, not Math.max(...keys): spreading 150k arguments overflows the call stack.
  const top = (m: ReadonlyMap<number, string>): number => {
    let max = -1;
    for (const id of m.keys()) if (id > max) max = id;
    return max + 1;
  };
  const size = sharedSize ?? Math.min(top(a.map), top(b.map));
  for (let id = 0; id < size; id++) {
    const ta = a.map.get(id);
    const tb = b.map.get(id);
    if (ta !== tb) {
      const show = (t: string | undefined): string => (t === undefined ? '(no token)' : JSON.stringify(t));
      throw new VocabularyMismatchError(
        `teacher and student tokenizers disagree at id ${id}: teacher ${a.name} has ${show(ta)}, ` +
          `student ${b.name} has ${show(tb)}; logit distillation needs the same token at every shared id ` +
          '(use a teacher and student from the same tokenizer family)',
      );
    }
  }
}
