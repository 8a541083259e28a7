/**
 * Global-norm gradient clipping as torch.nn.utils.clip_grad_norm_ does it: the norm over all gradients together,
 * then every gradient scaled by min(1, max_norm / (norm + 1e-6)). The norm before clipping is what NeMo logs as
 * grad_norm. The scaling is not a pass of its own: AdamW takes the coefficient (`gradScale`) and applies it as it
 * reads each gradient, the same float32 product as a tf.mul of the gradient would make.
 */
export { globalNorm } from '../ops/globalNorm.ts';

/** torch.nn.utils.clip_grad_norm_'s coefficient: min(1, maxNorm / (norm + 1e-6)); 1 when clipping is off or the norm is not finite. */
export function clipCoefficient(norm: number, maxNorm: number): number {
  if (!(maxNorm > 0) || !Number.isFinite(norm)) return 1;
  return Math.min(1, maxNorm / (norm + 1e-6));
}
