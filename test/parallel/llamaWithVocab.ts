/**
 * Test helper: a fixture llama with another vocabulary size, for the vocabulary-padding tests in worker threads
 * (vocabPadding.test.ts) and in worker processes (modelParallelRun.test.ts).
 */
import { mulberry32 } from '../../src/data/prng.ts';
import { checkpointVariant, type F32Tensor } from '../model/checkpointVariant.ts';

const VOCAB_TENSORS = new Set(['model.embed_tokens.weight', 'lm_head.weight']);

/**
 * A fixture llama with `vocab` ids: its embedding (and head) rows cut to `vocab`, or extended with random rows
 * (as large as the fixture's) that a smaller partner does not have. Written under the per-process scratch root.
 */
export function llamaWithVocab(name: 'llama-student' | 'llama-teacher', vocab: number, seed: number): string {
  const uniform = mulberry32(seed);
  return checkpointVariant(
    name,
    (ts) =>
      ts.map((t): F32Tensor => {
        if (!VOCAB_TENSORS.has(t.name)) return t;
        const cols = t.shape[1];
        const data = new Float32Array(vocab * cols);
        data.set(t.data.subarray(0, Math.min(vocab, t.shape[0]) * cols));
        for (let i = t.shape[0] * cols; i < data.length; i++) data[i] = (uniform() * 2 - 1) * 0.05;
        return { ...t, shape: [vocab, cols], data };
      }),
    (c) => ({ ...c, vocab_size: vocab }),
  );
}
