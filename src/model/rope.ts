/**
 * Rotary position embeddings as transformers' Llama applies them: `rotate_half` (the two halves of each head are
 * the pair, not adjacent lanes), and inv_freq computed as `_compute_default_rope_parameters` /
 * `_compute_linear_scaling_rope_parameters` / `_compute_llama3_parameters` do, rounded to float32 at the same steps,
 * so that positions far from 0 agree with the reference too.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RopeScaling } from './config.ts';
import { rotaryEmbedding } from '../ops/rotaryEmbedding.ts';

const f32 = Math.fround;

/** inv_freq[i] = 1 / θ^(2i/d) for i < d/2, then the scaling of `scaling.type`. Float32 values, as torch holds them. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float32Array {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f32(1 / f32(Math.pow(theta, f32((2 * i) / headDim))));
  if (scaling.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = f32(inv[i] / scaling.factor);
  } else if (scaling.type === 'llama3') {
    const factor = scaling.factor;
    const low = scaling.low_freq_factor ?? 1;
    const high = scaling.high_freq_factor ?? 4;
    const oldLen = scaling.original_max_position_embeddings ?? 8192;
    const lowFreqWavelen = oldLen / low;
    const highFreqWavelen = oldLen / high;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      // Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, the band between blended.
      const scaled = wavelen > lowFreqWavelen ? inv[i] / factor : inv[i];
      const medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
      if (medium) {
        const smooth = (oldLen / wavelen - low) / (high - low);
        inv[i] = f32((1 - smooth) * (scaled / factor) + smooth * scaled);
      } else {
        inv[i] = f32(scaled);
      }
    }
  }
  return inv;
}

export interface RopeTables {
  /** cos(pos · inv_freq) for both halves, [seq, headDim]. */
  cos: tf.Tensor2D;
  /** sin with the sign of rotate_half folded in: −sin on the first half, +sin on the second, [seq, headDim]. */
  sinSigned: tf.Tensor2D;
}

/**
 * cos/sin tables per sequence length and backend, built on the host once and kept: they are constants, and
 * rebuilding them every step costs an upload. The owning model disposes them.
 */
export class RopeCache {
  private readonly tables = new Map<string, RopeTables>();

  constructor(
    readonly invFreq: Float32Array,
    readonly headDim: number,
  ) {}

  get(seqLen: number): RopeTables {
    const key = `${tf.getBackend()}:${seqLen}`;
    let t = this.tables.get(key);
    if (!t) {
      const d = this.headDim;
      const half = d / 2;
      const cos = new Float32Array(seqLen * d);
      const sin = new Float32Array(seqLen * d);
      for (let p = 0; p < seqLen; p++) {
        for (let i = 0; i < half; i++) {
          // torch forms the angle as a float32 product, then takes cos/sin of that float32 value.
          const angle = f32(this.invFreq[i] * p);
          const c = Math.cos(angle);
          const s = Math.sin(angle);
          cos[p * d + i] = c;
          cos[p * d + half + i] = c;
          sin[p * d + i] = -s;
          sin[p * d + half + i] = s;
        }
      }
      t = { cos: tf.keep(tf.tensor2d(cos, [seqLen, d])), sinSigned: tf.keep(tf.tensor2d(sin, [seqLen, d])) };
      this.tables.set(key, t);
    }
    return t;
  }

  dispose(): void {
    for (const t of this.tables.values()) {
      t.cos.dispose();
      t.sinSigned.dispose();
    }
    this.tables.clear();
  }
}

/**
 * x·cos + rotate_half(x)·sin for x [batch, heads, seq, headDim]; rotate_half(x) = cat(−x₂, x₁). An op
 * (src/ops/rotaryEmbedding.ts): one fused kernel forward and one backward where the backend registers them, tfjs's
 * split, concat, mul, mul, add elsewhere, as the PyTorch fixtures were checked.
 */
export function applyRope(x: tf.Tensor4D, tables: RopeTables): tf.Tensor4D {
  return rotaryEmbedding(x, tables.cos, tables.sinSigned);
}
