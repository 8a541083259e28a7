/**
 * The two normalisations of the supported families, written as transformers computes them in float32, so that
 * logits agree with the reference to float32 rounding. Each is an op (src/ops): a fused kernel where the backend
 * registers one (webgpu: one dispatch forward instead of 6–10, 3–4 backward instead of 16–26), the tfjs
 * composition elsewhere.
 */
export { composedLayerNorm, layerNorm } from '../ops/layerNorm.ts';
export { composedRmsNorm, rmsNorm } from '../ops/rmsNorm.ts';
