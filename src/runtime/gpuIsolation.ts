/**
 * Pinning a webgpu worker to its GPU. CUDA_VISIBLE_DEVICES pins CUDA (tfjs-node), but NVIDIA's Vulkan driver
 * ignores it and Dawn chooses adapters by name, which two identical GPUs share: on a 2 × H200 host both webgpu
 * workers landed on GPU 0 (measured). Hiding the other GPUs' device nodes in a private mount namespace
 * (bin/isolate-gpu.sh) does pin them: each worker then ran on its own GPU. That needs Linux, root (or
 * CAP_SYS_ADMIN) and `unshare`; elsewhere the worker runs unpinned and the launcher says so.
 */
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import type { BackendChoice } from '../backend/select.ts';

const WRAPPER = fileURLToPath(new URL('../../bin/isolate-gpu.sh', import.meta.url));

export interface GpuIsolation {
  /** Passed to child_process.fork as execPath: the wrapper that execs Node inside the namespace. */
  execPath: string;
  env: Record<string, string>;
}

let unshareAvailable: boolean | null = null;

function nvidiaDevices(): string[] {
  try {
    return readdirSync('/dev').filter((n) => /^nvidia\d+$/.test(n));
  } catch {
    return [];
  }
}

/** The isolation for a webgpu worker on GPU `deviceIndex`, or a reason why there is none. */
export function gpuIsolation(backend: BackendChoice, deviceIndex: number): GpuIsolation | { none: string } {
  if (backend !== 'webgpu') return { none: 'not a webgpu worker' };
  const gpus = nvidiaDevices();
  if (gpus.length < 2) return { none: 'fewer than two NVIDIA GPUs' };
  if (!existsSync(`/dev/nvidia${deviceIndex}`)) return { none: `no /dev/nvidia${deviceIndex}` };
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return { none: 'hiding GPUs needs root on Linux' };
  if (unshareAvailable === null) {
    try {
      execFileSync('unshare', ['--version'], { stdio: 'ignore' });
      unshareAvailable = true;
    } catch {
      unshareAvailable = false;
    }
  }
  if (!unshareAvailable) return { none: 'unshare (util-linux) is not installed' };
  return { execPath: WRAPPER, env: { DISTILL_GPU_INDEX: String(deviceIndex), DISTILL_NODE: process.execPath } };
}
