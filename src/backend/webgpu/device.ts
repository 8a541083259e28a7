/**
 * The webgpu backend's device, created by us rather than by tfjs-backend-webgpu's own factory so that it can ask
 * for the features the mixed-precision matmul needs: `shader-f16`, `subgroups` and Dawn's
 * `chromium-experimental-subgroup-matrix` (tensor-core tiles; the H200 offers f16×f16→f32 16×16×16 through
 * NVIDIA's Vulkan driver). tfjs asks only for timestamp queries, and a device can never gain features later.
 *
 * Everything else matches tfjs's factory (limits raised to the adapter's, same backend class), so with the
 * features unused the backend behaves as before.
 */
import * as tf from '@tensorflow/tfjs-core';

/** What the device we created can do beyond plain WGSL, for the kernels that choose a path by it. */
export interface WebgpuCapabilities {
  shaderF16: boolean;
  /** f16 operand, f32 result tile shapes (M, N, K) the adapter offers; empty when subgroup matrices are absent. */
  subgroupMatrixF16: { M: number; N: number; K: number }[];
  /** Subgroup size when the adapter has one fixed size (min = max), else null: our matmul assumes a fixed size. */
  subgroupSize: number | null;
}

let capabilities: WebgpuCapabilities = { shaderF16: false, subgroupMatrixF16: [], subgroupSize: null };

export function webgpuCapabilities(): WebgpuCapabilities {
  return capabilities;
}

interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}
interface AdapterInfoLike {
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
  subgroupMatrixConfigs?: SubgroupMatrixConfig[];
}

/**
 * WGSL requires `enable` and `diagnostic` directives before any declaration, but tfjs prepends its own header to a
 * program's code. Our programs write the directives in their body; this moves them to the top before compiling.
 */
export function hoistDirectives(code: string): string {
  const directive = /^[ \t]*(enable|requires|diagnostic)\b[^;\n]*;[ \t]*$/gm;
  const found = code.match(directive);
  if (!found) return code;
  return [...new Set(found.map((d) => d.trim()))].join('\n') + '\n' + code.replace(directive, '');
}

/**
 * tfjs's entry point `_start` passes no `subgroup_id`, which a program needs whose subgroups load different tiles of
 * workgroup memory into subgroup matrices (Tint accepts such offsets only when derived from `subgroup_id`, with the
 * subgroup_uniformity language feature). A program asks for it by declaring `fn main(index : i32, subgroupIndex : u32)`;
 * the entry point is then given the builtin and forwards it.
 */
export function passSubgroupId(code: string): string {
  if (!code.includes('fn main(index : i32, subgroupIndex : u32)')) return code;
  const params = '@builtin(num_workgroups) NumWorkgroups : vec3<u32>)';
  const call = 'main(getGlobalIndex());';
  if (!code.includes(params) || !code.includes(call)) throw new Error("tfjs-backend-webgpu's entry point changed: cannot pass subgroup_id to main");
  return code
    .replace(params, '@builtin(num_workgroups) NumWorkgroups : vec3<u32>, @builtin(subgroup_id) SubgroupIndex : u32)')
    .replace(call, 'main(getGlobalIndex(), SubgroupIndex);');
}

type BackendClass = new (device: GPUDevice, adapterInfo?: GPUAdapterInfo) => tf.KernelBackend;

/**
 * Replaces tfjs's 'webgpu' backend factory with ours. Called once, after `navigator.gpu` is set and
 * tfjs-backend-webgpu is imported, before the backend is first initialised.
 */
export function registerWebgpuDevice(WebGPUBackend: BackendClass): void {
  tf.removeBackend('webgpu');
  tf.registerBackend(
    'webgpu',
    async () => {
      const gpu = (globalThis as unknown as { navigator: { gpu: GPU } }).navigator.gpu;
      const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
      if (!adapter) throw new Error('no WebGPU adapter');
      const wanted = ['timestamp-query', 'shader-f16', 'subgroups', 'chromium-experimental-subgroup-matrix'];
      const requiredFeatures = wanted.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
      const l = adapter.limits;
      const device = await adapter.requestDevice({
        requiredFeatures,
        requiredLimits: {
          maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
          maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
          maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
          maxBufferSize: l.maxBufferSize,
          maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
          maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        },
      });
      const info = adapter.info as GPUAdapterInfo & AdapterInfoLike;
      const has = (f: string): boolean => device.features.has(f);
      capabilities = {
        shaderF16: has('shader-f16'),
        subgroupMatrixF16: has('chromium-experimental-subgroup-matrix')
          ? (info.subgroupMatrixConfigs ?? []).filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32').map(({ M, N, K }) => ({ M, N, K }))
          : [],
        subgroupSize: info.subgroupMinSize && info.subgroupMinSize === info.subgroupMaxSize ? info.subgroupMinSize : null,
      };
      const createShaderModule = device.createShaderModule.bind(device);
      device.createShaderModule = (d: GPUShaderModuleDescriptor) => createShaderModule({ ...d, code: hoistDirectives(passSubgroupId(d.code)) });
      return new WebGPUBackend(device, info);
    },
    3,
  );
}
