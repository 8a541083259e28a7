/**
 * Registers every fused WGSL kernel for the webgpu backend under the name its op in src/ops defines, so that the
 * ops (and through them the model and the losses) run the kernels on webgpu and their tfjs compositions elsewhere.
 * selectBackend calls this when it chooses webgpu; a second call registers nothing.
 */
import { CAUSAL_SOFTMAX_GRAD_KERNEL, CAUSAL_SOFTMAX_KERNEL } from '../../ops/causalSoftmax.ts';
import { LAYER_NORM_GRAD_KERNEL, LAYER_NORM_KERNEL } from '../../ops/layerNorm.ts';
import { RMS_NORM_GRAD_KERNEL, RMS_NORM_KERNEL } from '../../ops/rmsNorm.ts';
import { ROTARY_EMBEDDING_GRAD_KERNEL, ROTARY_EMBEDDING_KERNEL } from '../../ops/rotaryEmbedding.ts';
import { SOFTMAX_KL_BACKWARD_KERNEL, SOFTMAX_KL_FORWARD_KERNEL } from '../../ops/softmaxKl.ts';
import { SWIGLU_GRAD_KERNEL, SWIGLU_KERNEL } from '../../ops/swiglu.ts';
import { causalSoftmaxGradKernel, causalSoftmaxKernel } from './causalSoftmax.ts';
import { layerNormGradKernel, layerNormKernel } from './layerNorm.ts';
import { registerAccurateLog1p } from './log1p.ts';
import { registerWebgpuKernel } from './program.ts';
import { rmsNormGradKernel, rmsNormKernel } from './rmsNorm.ts';
import { rotaryEmbeddingGradKernel, rotaryEmbeddingKernel } from './rotaryEmbedding.ts';
import { softmaxKlBackwardKernel, softmaxKlForwardKernel } from './softmaxKl.ts';
import { swigluGradKernel, swigluKernel } from './swiglu.ts';

export function registerWebgpuKernels(): void {
  registerWebgpuKernel(RMS_NORM_KERNEL, rmsNormKernel);
  registerWebgpuKernel(RMS_NORM_GRAD_KERNEL, rmsNormGradKernel);
  registerWebgpuKernel(LAYER_NORM_KERNEL, layerNormKernel);
  registerWebgpuKernel(LAYER_NORM_GRAD_KERNEL, layerNormGradKernel);
  registerWebgpuKernel(SWIGLU_KERNEL, swigluKernel);
  registerWebgpuKernel(SWIGLU_GRAD_KERNEL, swigluGradKernel);
  registerWebgpuKernel(ROTARY_EMBEDDING_KERNEL, rotaryEmbeddingKernel);
  registerWebgpuKernel(ROTARY_EMBEDDING_GRAD_KERNEL, rotaryEmbeddingGradKernel);
  registerWebgpuKernel(CAUSAL_SOFTMAX_KERNEL, causalSoftmaxKernel);
  registerWebgpuKernel(CAUSAL_SOFTMAX_GRAD_KERNEL, causalSoftmaxGradKernel);
  registerWebgpuKernel(SOFTMAX_KL_FORWARD_KERNEL, softmaxKlForwardKernel);
  registerWebgpuKernel(SOFTMAX_KL_BACKWARD_KERNEL, softmaxKlBackwardKernel);
  // tfjs-webgpu's own Log1p loses digits near 0; ours replaces it (log1p.ts says why).
  registerAccurateLog1p();
}
