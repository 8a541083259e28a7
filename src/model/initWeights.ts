/**
 * Fresh weights for a model trained from scratch, as Hugging Face initialises GPT-2 and Llama: every matrix
 * from N(0, initializer_range²) (0.02 by default), norm weights 1, biases 0. Seeded, so the same config and seed
 * give the same student on every machine: the KD run and its CE-only baseline start from identical weights.
 */
import { mulberry32 } from '../data/prng.ts';
import type { ModelConfig } from './config.ts';
import type { WeightSource } from './create.ts';

export function initialWeights(config: ModelConfig, seed: number): WeightSource {
  const std = typeof config.raw.initializer_range === 'number' ? config.raw.initializer_range : 0.02;
  const uniform = mulberry32(seed);
  // Box–Muller over the seeded uniform stream; a spare value is kept so that no draw is wasted.
  let spare: number | null = null;
  const normal = (): number => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    const u = Math.max(uniform(), 1e-12);
    const v = uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
  return (name: string, shape: number[]): Float32Array => {
    const n = shape.reduce((a, d) => a * d, 1);
    const out = new Float32Array(n);
    if (shape.length >= 2) {
      for (let i = 0; i < n; i++) out[i] = normal() * std;
    } else if (/norm|ln_/.test(name) && name.endsWith('weight')) {
      out.fill(1);
    }
    return out;
  };
}
