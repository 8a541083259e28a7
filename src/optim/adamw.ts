/**
 * AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW computes it, so that a trajectory matches PyTorch's:
 *   p ← p − lr·wd·p;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
 *   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
 * Moments are float32 tensors kept on the backend; the step count is shared by all parameters.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Decay every parameter (as the fixture trajectory does) instead of skipping biases and norm weights. */
  weightDecayAll: boolean;
}

export const NEMO_ADAMW_DEFAULTS: AdamWOptions = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: false };

/** Biases and norm weights (1-D parameters) are not decayed by default, as NeMo and Megatron do. */
export function isDecayed(name: string, shape: readonly number[], decayAll: boolean): boolean {
  return decayAll || shape.length >= 2;
}

/** The optimizer state a checkpoint must hold to resume exactly. */
export interface AdamWState {
  step: number;
  moments: Map<string, { m: Float32Array; v: Float32Array }>;
}

export class AdamW {
  private m = new Map<string, tf.Variable>();
  private v = new Map<string, tf.Variable>();
  step = 0;

  constructor(
    private readonly params: Map<string, tf.Variable>,
    readonly options: AdamWOptions,
  ) {
    for (const [name, p] of params) {
      // Variables are unnamed: tfjs names are global and two optimizers (or runs) may hold the same parameter names.
      this.m.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
      this.v.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
    }
  }

  /** One update at learning rate `lr` with gradients keyed by parameter name (already clipped). */
  apply(grads: Map<string, tf.Tensor>, lr: number): void {
    this.step += 1;
    const { beta1, beta2, eps, weightDecay, weightDecayAll } = this.options;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    const stepSize = lr / bc1;
    const sqrtBc2 = Math.sqrt(bc2);
    for (const [name, p] of this.params) {
      const g = grads.get(name);
      if (!g) continue;
      const m = this.m.get(name)!;
      const v = this.v.get(name)!;
      tf.tidy(() => {
        const decayed = isDecayed(name, p.shape, weightDecayAll) && weightDecay !== 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
        const mNew = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const vNew = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        const denom = tf.add(tf.div(tf.sqrt(vNew), sqrtBc2), eps);
        m.assign(mNew);
        v.assign(vNew);
        p.assign(tf.sub(decayed, tf.mul(tf.div(mNew, denom), stepSize)));
      });
    }
  }

  async state(): Promise<AdamWState> {
    const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
    for (const name of this.params.keys()) {
      moments.set(name, {
        m: (await this.m.get(name)!.data()) as Float32Array,
        v: (await this.v.get(name)!.data()) as Float32Array,
      });
    }
    return { step: this.step, moments };
  }

  loadState(s: AdamWState): void {
    this.step = s.step;
    for (const [name, p] of this.params) {
      const mv = s.moments.get(name);
      if (!mv) throw new Error(`optimizer state has no moments for parameter "${name}"`);
      tf.tidy(() => {
        this.m.get(name)!.assign(tf.tensor(mv.m, p.shape, 'float32'));
        this.v.get(name)!.assign(tf.tensor(mv.v, p.shape, 'float32'));
      });
    }
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}
