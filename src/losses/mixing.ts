/**
 * How the KD term is scaled and mixed with the student's own cross-entropy, and the checks on the options that
 * every loss entry point runs first (a bad β or τ should fail with the option's name, not as a NaN many steps on).
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../errors.ts';
import type { KdLossOptions } from './types.ts';

/** α of the options: `kdRatio`, or its 0.1 name `alpha` (one release); 1 (pure KD) when neither is given. */
export function kdRatioOf(options: Pick<KdLossOptions, 'kdRatio' | 'alpha'>): number {
  const { kdRatio, alpha } = options;
  if (kdRatio !== undefined && alpha !== undefined && kdRatio !== alpha) {
    throw new ConfigError(`KD options give kdRatio ${kdRatio} and alpha ${alpha}, its 0.1 name: give kdRatio only`);
  }
  return kdRatio ?? alpha ?? 1;
}

/** Throws a ConfigError naming the option when it cannot work. */
export function validateKdOptions(options: KdLossOptions): void {
  const { temperature, jsdBeta, skewLambda } = options;
  const kdRatio = kdRatioOf(options);
  if (!(temperature > 0) || !Number.isFinite(temperature)) {
    throw new ConfigError(`KD temperature ${temperature}: must be a finite number > 0`);
  }
  if (options.kind === 'jsd' && !(jsdBeta > 0 && jsdBeta < 1)) {
    // At β = 0 or 1 the generalised JSD is identically 0 (m equals one side); TRL swaps in a plain KL there.
    // Ask for that KL by name rather than silently changing the loss.
    throw new ConfigError(`KD jsdBeta ${jsdBeta}: must be in (0, 1); for β = 0 or 1 use kind forward_kl or reverse_kl`);
  }
  if (options.kind === 'skew_kl' && !(skewLambda >= 0 && skewLambda < 1)) {
    throw new ConfigError(`KD skewLambda ${skewLambda}: must be in [0, 1) (λ = 1 makes the loss identically 0)`);
  }
  if (!(kdRatio >= 0 && kdRatio <= 1)) {
    throw new ConfigError(`KD kdRatio ${kdRatio}: must be in [0, 1]`);
  }
}

/** The factor on the KD term: τ² (Hinton: keeps gradient magnitudes independent of τ) when asked and τ ≠ 1. */
export function kdScale(options: KdLossOptions): number {
  const t = options.temperature;
  return options.scaleByTemperatureSquared && t !== 1 ? t * t : 1;
}

/** (1 − α)·CE + α·KD·kdScale. With α = 1 the CE is not needed and may be null. */
export function mixLosses(ce: tf.Scalar | null, kd: tf.Scalar, options: KdLossOptions): tf.Scalar {
  const kdRatio = kdRatioOf(options);
  return tf.tidy(() => {
    const kdPart = tf.mul(kd, kdRatio * kdScale(options)) as tf.Scalar;
    if (kdRatio === 1) return kdPart;
    if (ce === null) throw new ConfigError(`KD kdRatio ${kdRatio} < 1 mixes in the cross-entropy, but no labels were given`);
    return tf.add(kdPart, tf.mul(ce, 1 - kdRatio)) as tf.Scalar;
  });
}
