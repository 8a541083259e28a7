/**
 * Every CUDA C source the backend can generate, by kernel name: what the CI test compiles with NVRTC on a machine
 * without a GPU, so that a kernel that does not compile fails there and not on a user's GPU.
 */
import { elementwiseSources } from './elementwise.ts';
import { gatherSources } from './gather.ts';
import { layoutSources } from './layout.ts';
import { matMulSources } from './matMul.ts';
import { reduceSources } from './reduce.ts';
import { topKSources } from './topK.ts';
import { normSources } from './fused/norms.ts';
import { attentionSources } from './fused/attention.ts';
import { softmaxKlSources } from './fused/softmaxKl.ts';
import { adamwSources } from './fused/adamw.ts';
import { globalNormSources } from './globalNorm.ts';

export interface KernelSource {
  name: string;
  source: string;
}

export function allKernelSources(): KernelSource[] {
  return [
    ...elementwiseSources(),
    ...reduceSources(),
    ...layoutSources(),
    ...gatherSources(),
    ...matMulSources(),
    ...topKSources(),
    ...normSources(),
    ...attentionSources(),
    ...softmaxKlSources(),
    ...adamwSources(),
    ...globalNormSources(),
  ];
}
