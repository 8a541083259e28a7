/**
 * The shared vocabulary of the losses. Every loss is a masked mean over token positions of a per-position
 * quantity, computed in float32.
 */
export type KdLossKind = 'forward_kl' | 'reverse_kl' | 'jsd' | 'skew_kl';
export const KD_LOSS_KINDS: readonly KdLossKind[] = ['forward_kl', 'reverse_kl', 'jsd', 'skew_kl'];

export interface KdLossOptions {
  kind: KdLossKind;
  /** τ, applied to both teacher and student logits. */
  temperature: number;
  /** Multiply the training loss by τ² (Hinton); off reproduces NeMo/Megatron at τ = 1. */
  scaleByTemperatureSquared: boolean;
  /** β of the generalised JSD (TRL GKD). */
  jsdBeta: number;
  /** λ of the skew KL (DistiLLM). */
  skewLambda: number;
  /**
   * α, the weight of the KD term against the student's own next-token cross-entropy: (1 − α)·CE + α·KD, the
   * recipe's `kdRatio` and the CLI's `--kd_ratio`. Absent means 1 (pure distillation, as NeMo/Megatron train).
   */
  kdRatio?: number;
  /**
   * @deprecated The 0.1 name of `kdRatio`, accepted for one release: give `kdRatio`. Giving both with different
   * values is refused (kdRatioOf in mixing.ts).
   */
  alpha?: number;
}

/** The defaults of every option but α, which is absent (1) so that spreading them under `kdRatio` or `alpha` works. */
export const DEFAULT_KD_LOSS: KdLossOptions = {
  kind: 'forward_kl',
  temperature: 1,
  scaleByTemperatureSquared: true,
  jsdBeta: 0.5,
  skewLambda: 0.1,
};
