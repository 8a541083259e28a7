/**
 * Picks and starts the tfjs backend. `auto` tries, in order of speed: tfjs-node-gpu / tfjs-node (TensorFlow C
 * library, CUDA 11.2), our `cuda` backend (the machine's CUDA driver, cuBLAS and NVRTC through koffi), WebGPU on an
 * adapter that is a real GPU (Dawn), then wasm (SIMD), then cpu. It reports which one it chose
 * and why each faster one was skipped, because a silent fall-back to a 30x slower backend is a lost day.
 */
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's Node bundle registers no gradient functions; the union package registers all of them into the same
// engine (its ESM sources cannot be imported by Node directly).
import '@tensorflow/tfjs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { existsSync, readdirSync } from 'node:fs';
import type { CudaBackend } from './cuda/backend.ts';
import { openLibrary } from './cuda/libraries.ts';
import { registerCudaKernels } from './cuda/kernels/register.ts';
import { setCudaMatMulPrecision } from './cuda/kernels/matMul.ts';
import { BackendError } from '../errors.ts';
import { registerEmbeddingKernels } from './embeddingKernels.ts';
import { registerWasmMatMul } from './wasmMatMul.ts';
import { registerReductionGradients } from './reductionGradients.ts';
import { registerWebgpuKernels } from './webgpu/kernels.ts';
import { registerWebgpuDevice } from './webgpu/device.ts';
import { mixedPrecisionUnavailable, setMatMulPrecision, type Precision } from './webgpu/mixedPrecisionMatMul.ts';

export type BackendName = 'tensorflow' | 'cuda' | 'webgpu' | 'wasm' | 'cpu';
export type BackendChoice = BackendName | 'auto';
export const BACKEND_CHOICES: BackendChoice[] = ['auto', 'tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu'];

export interface BackendReport {
  chosen: BackendName;
  /** One line per faster backend that was skipped, with the reason. */
  skipped: { backend: BackendName; reason: string }[];
  /** Adapter description for webgpu, library for tensorflow, SIMD state for wasm. */
  detail: string;
  /** The matmul precision in effect: the one asked for, or '32' after a fall-back that was reported. */
  precision: Precision;
}

export interface BackendOptions {
  /** WebGPU adapter index, so that a worker can be pinned to its own GPU. */
  adapterIndex?: number;
  /** Accept a software (CPU) WebGPU adapter such as Mesa's lavapipe: correct but slow, for tests. */
  allowSoftwareAdapter?: boolean;
  /** Where to print the report; defaults to stderr. Pass null for silence. */
  log?: ((line: string) => void) | null;
  /** NeMo's trainer.precision: '32' (default) or a mixed one, which puts matmul operands on webgpu tensor cores. */
  precision?: Precision;
}

/**
 * Applies `asked` on the backend just chosen. Mixed precision exists only as webgpu tensor-core matmuls; anywhere
 * else the run goes on in fp32 with one line saying why, as NeMo does when a device lacks bf16.
 */
function applyPrecision(backend: BackendName, asked: Precision, log: ((line: string) => void) | null): Precision {
  if (backend === 'webgpu') setMatMulPrecision('32');
  if (backend === 'cuda') {
    setCudaMatMulPrecision(asked);
    if (asked !== '32')
      log?.(
        `precision: ${asked} (cuBLAS matmuls on ${asked === 'bf16-mixed' ? 'bf16' : 'f16'} operands, fp32 accumulation and output; weights, optimizer state and loss in fp32)`,
      );
    return asked;
  }
  if (asked === '32') return '32';
  const why = backend !== 'webgpu' ? `the ${backend} backend has no tensor-core path (cuda and webgpu do)` : mixedPrecisionUnavailable();
  if (why) {
    log?.(`precision: ${asked} asked for, running fp32 matmuls: ${why}`);
    return '32';
  }
  setMatMulPrecision(asked);
  log?.(`precision: ${asked} (matmul operands in f16 on tensor cores, f32 accumulation; weights, optimizer state and loss in f32)`);
  return asked;
}

const require = createRequire(import.meta.url);

type Attempt = { ok: true; detail: string } | { ok: false; reason: string };

async function tryTensorflow(): Promise<Attempt> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      require.resolve(pkg);
    } catch {
      continue;
    }
    try {
      // tfjs-node registers the 'tensorflow' backend on import; a missing libtensorflow or CUDA throws here.
      await import(pkg);
      await tf.setBackend('tensorflow');
      return { ok: true, detail: pkg };
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0];
      return {
        ok: false,
        reason: `${pkg} is installed but failed to load (${msg}); on a GPU machine it needs CUDA 11.2 and cuDNN 8.1 libraries on LD_LIBRARY_PATH`,
      };
    }
  }
  return {
    ok: false,
    reason:
      'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed (npm skips the optional tfjs-node-gpu when its libtensorflow download fails)',
  };
}

/** The cuda backend, made once per process: it holds the device's context, stream and memory pools. */
let cudaBackend: CudaBackend | null = null;

async function tryCuda(): Promise<Attempt> {
  if (!cudaBackend) {
    try {
      const { CudaBackend } = await import('./cuda/backend.ts');
      cudaBackend = new CudaBackend(0);
      // cuBLAS and NVRTC are opened now, so that a missing one is reported here rather than at the first product.
      void cudaBackend.blas;
      openLibrary('nvrtc');
    } catch (e) {
      cudaBackend = null;
      return { ok: false, reason: (e as Error).message.split('\n')[0] };
    }
    registerCudaKernels();
    const made = cudaBackend;
    tf.registerBackend('cuda', () => made);
  }
  if (!(await tf.setBackend('cuda'))) return { ok: false, reason: 'the cuda backend failed to initialise' };
  const d = cudaBackend.driver.device;
  return { ok: true, detail: `${d.name}, compute capability ${(d.computeCapability / 10).toFixed(1)}, ${(d.totalBytes / 2 ** 30).toFixed(0)} GiB` };
}

/**
 * Whether a Vulkan driver is installed at all (an ICD manifest in the loader's folders or named by the
 * environment). Without one, Dawn would print the loader's two-line warning with a C++ frame before failing; we
 * say why in one line instead.
 */
function vulkanDrivers(): 'none' | 'software' | 'hardware' {
  if (process.platform !== 'linux' || process.env.VK_DRIVER_FILES || process.env.VK_ICD_FILENAMES || process.env.VK_ADD_DRIVER_FILES) return 'hardware';
  const dirs = [
    '/usr/share/vulkan/icd.d',
    '/etc/vulkan/icd.d',
    '/usr/local/share/vulkan/icd.d',
    join(process.env.XDG_DATA_HOME ?? join(process.env.HOME ?? '/root', '.local/share'), 'vulkan/icd.d'),
  ];
  const manifests = dirs.flatMap((d) => (existsSync(d) ? readdirSync(d).filter((f) => f.endsWith('.json')) : []));
  if (manifests.length === 0) return 'none';
  // Without a GPU device node only a CPU driver (Mesa's lavapipe) can answer; Dawn also prints warnings about its
  // limits while it starts, so a machine like that is not probed unless software adapters are wanted (tests).
  const gpuNodes = existsSync('/dev/nvidia0') || (existsSync('/dev/dri') && readdirSync('/dev/dri').some((f) => f.startsWith('renderD')));
  return gpuNodes ? 'hardware' : 'software';
}

interface GpuAdapterLike {
  info?: { vendor?: string; architecture?: string; device?: string; description?: string };
  requestAdapterInfo?: () => Promise<{ vendor?: string; architecture?: string; device?: string; description?: string }>;
}
interface GpuLike {
  requestAdapter(opts?: { powerPreference?: string }): Promise<GpuAdapterLike | null>;
}

/** The Dawn instance, created once per process: Dawn keeps the process alive until it is released. */
let dawnGpu: GpuLike | null = null;
/** Our device factory replaces tfjs's once, before the webgpu backend is first initialised. */
let webgpuDeviceRegistered = false;

async function tryWebgpu(opts: BackendOptions): Promise<Attempt> {
  const drivers = dawnGpu ? 'hardware' : vulkanDrivers();
  if (drivers === 'none') {
    return {
      ok: false,
      reason:
        'no Vulkan driver is installed (no ICD manifest in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d); on a CPU machine install Mesa 25 mesa-vulkan-drivers from bookworm-backports',
    };
  }
  if (drivers === 'software' && !opts.allowSoftwareAdapter) {
    return {
      ok: false,
      reason:
        "no GPU device here (/dev/dri/renderD*, /dev/nvidia0), so only a software Vulkan driver such as Mesa's lavapipe could run WebGPU, slower than wasm",
    };
  }
  let webgpu: { create: (flags: string[]) => GpuLike; globals: Record<string, unknown> };
  try {
    webgpu = (await import('webgpu')) as unknown as typeof webgpu;
  } catch (e) {
    return { ok: false, reason: `the webgpu (Dawn) package did not load: ${(e as Error).message.split('\n')[0]}` };
  }
  if (!dawnGpu) {
    Object.assign(globalThis, webgpu.globals);
    // These flags expose shader-f16 and subgroup matrices on NVIDIA's Vulkan driver; harmless elsewhere.
    dawnGpu = webgpu.create(['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia']);
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: dawnGpu }, configurable: true, writable: true });
  }
  const adapter = await dawnGpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter)
    return { ok: false, reason: 'no WebGPU adapter (no Vulkan driver found; on a CPU machine install Mesa 25 mesa-vulkan-drivers from bookworm-backports)' };
  const info = adapter.info ?? (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
  const software = /llvmpipe|lavapipe|swiftshader|software|cpu/i.test(name);
  if (software && !opts.allowSoftwareAdapter) {
    return { ok: false, reason: `the only WebGPU adapter is a software one (${name}), slower than wasm` };
  }
  try {
    const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
    if (!webgpuDeviceRegistered) {
      registerWebgpuDevice(WebGPUBackend);
      webgpuDeviceRegistered = true;
    }
    const okSet = await tf.setBackend('webgpu');
    if (!okSet) return { ok: false, reason: `tfjs-backend-webgpu failed to initialise on ${name}` };
  } catch (e) {
    return { ok: false, reason: `tfjs-backend-webgpu failed: ${(e as Error).message.split('\n')[0]}` };
  }
  return { ok: true, detail: name || 'WebGPU adapter' };
}

/**
 * Runs `start` and removes the process-wide error listeners it added. tfjs-wasm's emscripten glue installs
 * uncaughtException / unhandledRejection handlers that rethrow, so that any later uncaught error in a user's script
 * printed ~39 KB of minified glue instead of the error; without them Node reports the user's own error.
 */
async function withoutAddedErrorListeners<T>(start: () => Promise<T>): Promise<T> {
  const before = { exception: new Set(process.listeners('uncaughtException')), rejection: new Set(process.listeners('unhandledRejection')) };
  try {
    return await start();
  } finally {
    for (const l of process.listeners('uncaughtException')) if (!before.exception.has(l)) process.removeListener('uncaughtException', l);
    for (const l of process.listeners('unhandledRejection')) if (!before.rejection.has(l)) process.removeListener('unhandledRejection', l);
  }
}

async function tryWasm(): Promise<Attempt> {
  try {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    // In Node the backend reads its .wasm binaries from its own dist folder.
    const dist = join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), '/');
    wasm.setWasmPaths(dist);
    const okSet = await withoutAddedErrorListeners(() => tf.setBackend('wasm'));
    if (!okSet) return { ok: false, reason: 'tfjs-backend-wasm failed to initialise' };
    return { ok: true, detail: `SIMD ${tf.env().getBool('WASM_HAS_SIMD_SUPPORT') ? 'on' : 'off'}, 1 thread` };
  } catch (e) {
    return { ok: false, reason: `tfjs-backend-wasm failed: ${(e as Error).message.split('\n')[0]}` };
  }
}

async function tryCpu(): Promise<Attempt> {
  await import('@tensorflow/tfjs-backend-cpu');
  await tf.setBackend('cpu');
  // The cpu backend prints an advertisement for tfjs-node on first use; the selector has already said why.
  (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
  return { ok: true, detail: 'plain JavaScript (reference; about 30x slower than wasm)' };
}

function attempt(name: BackendName, opts: BackendOptions): Promise<Attempt> {
  switch (name) {
    case 'tensorflow':
      return tryTensorflow();
    case 'cuda':
      return tryCuda();
    case 'webgpu':
      return tryWebgpu(opts);
    case 'wasm':
      return tryWasm();
    case 'cpu':
      return tryCpu();
  }
}

/**
 * Starts the requested backend and makes it tfjs's current one. An explicit choice that cannot start throws a
 * BackendError with the reason; `auto` falls back and reports.
 */
export async function selectBackend(choice: BackendChoice = 'auto', opts: BackendOptions = {}): Promise<BackendReport> {
  const log = opts.log === undefined ? (l: string) => process.stderr.write(l + '\n') : opts.log;
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new BackendError(`--backend ${choice}: unknown; use one of ${BACKEND_CHOICES.join(', ')}`);
  }
  const order: BackendName[] = choice === 'auto' ? ['tensorflow', 'cuda', 'webgpu', 'wasm', 'cpu'] : [choice];
  const skipped: BackendReport['skipped'] = [];
  for (const name of order) {
    const a = await attempt(name, opts);
    if (a.ok) {
      registerEmbeddingKernels(name);
      registerReductionGradients();
      if (name === 'wasm') registerWasmMatMul();
      if (name === 'webgpu') registerWebgpuKernels();
      if (log) {
        log(`backend: ${name} (${a.detail})`);
        for (const s of skipped) log(`  skipped ${s.backend}: ${s.reason}`);
      }
      return { chosen: name, skipped, detail: a.detail, precision: applyPrecision(name, opts.precision ?? '32', log) };
    }
    if (choice !== 'auto') throw new BackendError(`--backend ${name} cannot start here: ${a.reason}`);
    skipped.push({ backend: name, reason: a.reason });
  }
  throw new BackendError(`no backend could start: ${skipped.map((s) => `${s.backend}: ${s.reason}`).join('; ')}`);
}

/** The backends that can start on this machine, for tests that run on each backend present. */
export async function availableBackends(opts: BackendOptions = {}): Promise<BackendName[]> {
  const out: BackendName[] = [];
  for (const name of ['cpu', 'wasm', 'webgpu', 'cuda'] as BackendName[]) {
    const a = await attempt(name, { ...opts, allowSoftwareAdapter: true });
    if (a.ok) out.push(name);
  }
  return out;
}
