/**
 * AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW computes it, so that a trajectory matches PyTorch's:
 *   p ← p − lr·wd·p;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
 *   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
 * Moments are float32 tensors kept on the backend; the step count is shared by all parameters.
 */
import * as tf from '@tensorflow/tfjs-core';
import { adamwUpdate } from '../ops/adamwUpdate.ts';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Decay every parameter (as the fixture trajectory does) instead of skipping biases and norm weights. */
  weightDecayAll: boolean;
  /** Force the flat (all parameters in one vector) or per-parameter update; by default flat on webgpu only. */
  flat?: boolean;
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
  /**
   * The moments of all parameters in one flat vector each, in `params` order: an update is one chain of a dozen
   * element-wise ops over every parameter at once instead of a dozen per parameter (on webgpu each op is a
   * dispatch: ~570 per step for config S before, ~40 + one slice and assign per parameter now).
   */
  private readonly m: tf.Variable;
  private readonly v: tf.Variable;
  /** Per-parameter moments, used instead of the flat vectors off webgpu (see `flat`). */
  private readonly mOf = new Map<string, tf.Variable>();
  private readonly vOf = new Map<string, tf.Variable>();
  /**
   * Flat on webgpu, where each op is a dispatch; per parameter elsewhere: wasm's SplitV took 0.9 s to cut 5 M
   * values into 40 parameters (measured), far more than the dispatches it saves.
   */
  readonly flat: boolean;
  private readonly names: string[];
  private readonly sizes: number[];
  /** 1 where weight decay applies, 0 elsewhere (biases and norm weights unless weightDecayAll). */
  private readonly decayMask: tf.Tensor1D;
  step = 0;

  constructor(
    private readonly params: Map<string, tf.Variable>,
    readonly options: AdamWOptions,
  ) {
    this.names = [...params.keys()];
    this.sizes = this.names.map((n) => params.get(n)!.size);
    const total = this.sizes.reduce((a, b) => a + b, 0);
    this.flat = options.flat ?? tf.getBackend() === 'webgpu';
    // Variables are unnamed: tfjs names are global and two optimizers (or runs) may hold the same parameter names.
    this.m = tf.tidy(() => tf.variable(tf.zeros([this.flat ? total : 0]), false));
    this.v = tf.tidy(() => tf.variable(tf.zeros([this.flat ? total : 0]), false));
    if (!this.flat) {
      for (const [name, p] of params) {
        this.mOf.set(
          name,
          tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
        );
        this.vOf.set(
          name,
          tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
        );
      }
    }
    const mask = new Float32Array(total);
    let at = 0;
    for (const [i, name] of this.names.entries()) {
      if (isDecayed(name, params.get(name)!.shape, options.weightDecayAll)) mask.fill(1, at, at + this.sizes[i]);
      at += this.sizes[i];
    }
    this.decayMask = tf.tensor1d(mask);
  }

  /** One update at learning rate `lr` with gradients keyed by parameter name, each scaled by `gradScale` (clipping's coefficient) as it is read. */
  apply(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
    const missing = this.names.filter((n) => !grads.has(n));
    if (missing.length) throw new Error(`AdamW: no gradient for ${missing.join(', ')}`);
    this.step += 1;
    const { beta1, beta2, eps, weightDecay } = this.options;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    const stepSize = lr / bc1;
    const sqrtBc2 = Math.sqrt(bc2);
    if (!this.flat) {
      for (const [name, p] of this.params) {
        const g = grads.get(name)!;
        const m = this.mOf.get(name)!;
        const v = this.vOf.get(name)!;
        tf.tidy(() => {
          const decayFactor = isDecayed(name, p.shape, this.options.weightDecayAll) && weightDecay !== 0 ? 1 - lr * weightDecay : 1;
          const [pNew, mNew, vNew] = adamwUpdate(p, g, m, v, { beta1, beta2, eps, decayFactor, stepSize, sqrtBc2, gradScale });
          m.assign(mNew);
          v.assign(vNew);
          p.assign(pNew);
        });
      }
      return;
    }
    tf.tidy(() => {
      const flat = (t: tf.Tensor): tf.Tensor => tf.reshape(t, [-1]);
      const whole = tf.concat(this.names.map((n) => flat(grads.get(n)!)));
      const g = gradScale !== 1 ? tf.mul(whole, gradScale) : whole;
      const p = tf.concat(this.names.map((n) => flat(this.params.get(n)!)));
      // p·(1 − lr·wd) where decayed, p elsewhere: torch's decoupled decay, applied before the Adam step.
      const decayed = weightDecay !== 0 ? tf.mul(p, tf.sub(1, tf.mul(this.decayMask, lr * weightDecay))) : p;
      const mNew = tf.add(tf.mul(this.m, beta1), tf.mul(g, 1 - beta1));
      const vNew = tf.add(tf.mul(this.v, beta2), tf.mul(tf.square(g), 1 - beta2));
      const denom = tf.add(tf.div(tf.sqrt(vNew), sqrtBc2), eps);
      this.m.assign(mNew);
      this.v.assign(vNew);
      const updated = tf.split(tf.sub(decayed, tf.mul(tf.div(mNew, denom), stepSize)), this.sizes);
      for (const [i, name] of this.names.entries()) {
        const v = this.params.get(name)!;
        v.assign(tf.reshape(updated[i], v.shape));
      }
    });
  }

  async state(): Promise<AdamWState> {
    const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
    if (!this.flat) {
      for (const name of this.names) {
        moments.set(name, { m: (await this.mOf.get(name)!.data()) as Float32Array, v: (await this.vOf.get(name)!.data()) as Float32Array });
      }
      return { step: this.step, moments };
    }
    const m = (await this.m.data()) as Float32Array;
    const v = (await this.v.data()) as Float32Array;
    let at = 0;
    for (const [i, name] of this.names.entries()) {
      moments.set(name, { m: m.slice(at, at + this.sizes[i]), v: v.slice(at, at + this.sizes[i]) });
      at += this.sizes[i];
    }
    return { step: this.step, moments };
  }

  loadState(s: AdamWState): void {
    const total = this.sizes.reduce((a, b) => a + b, 0);
    const m = new Float32Array(total);
    const v = new Float32Array(total);
    let at = 0;
    for (const [i, name] of this.names.entries()) {
      const mv = s.moments.get(name);
      if (!mv) throw new Error(`optimizer state has no moments for parameter "${name}"`);
      if (mv.m.length !== this.sizes[i] || mv.v.length !== this.sizes[i]) {
        throw new Error(`optimizer state for "${name}" holds ${mv.m.length} values, the parameter ${this.sizes[i]}`);
      }
      m.set(mv.m, at);
      v.set(mv.v, at);
      at += this.sizes[i];
    }
    this.step = s.step;
    tf.tidy(() => {
      if (this.flat) {
        this.m.assign(tf.tensor1d(m));
        this.v.assign(tf.tensor1d(v));
        return;
      }
      let at = 0;
      for (const [i, name] of this.names.entries()) {
        const shape = this.params.get(name)!.shape;
        this.mOf.get(name)!.assign(tf.tensor(m.subarray(at, at + this.sizes[i]), shape));
        this.vOf.get(name)!.assign(tf.tensor(v.subarray(at, at + this.sizes[i]), shape));
        at += this.sizes[i];
      }
    });
  }

  dispose(): void {
    this.m.dispose();
    this.v.dispose();
    for (const t of [...this.mOf.values(), ...this.vOf.values()]) t.dispose();
    this.decayMask.dispose();
  }
}
