/**
 * Finds the CUDA libraries on the user's machine and opens them with koffi (FFI), so that the `cuda` backend needs
 * no compiler and no download: the driver (`libcuda.so.1`, from the NVIDIA driver), cuBLAS and cuBLASLt, NVRTC (and
 * NCCL for the collectives). They come from a CUDA toolkit, from distro packages (Debian's and Ubuntu's
 * `libcublas11`, `libnvrtc11.2`: CUDA 11.8, which covers Hopper), or from Python's `nvidia-*` wheels that PyTorch
 * installs. A library that cannot be found is named in the error together with where we looked and what to install.
 */
import { existsSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { BackendError } from '../../errors.ts';

const require = createRequire(import.meta.url);

/** koffi's library handle, typed as far as we use it. */
export interface NativeLibrary {
  func(signature: string): NativeFunction;
}
export type NativeFunction = ((...args: unknown[]) => unknown) & { async?: unknown };

export interface Koffi {
  load(path: string): NativeLibrary;
  address(value: unknown): bigint;
  /** An ArrayBuffer over `bytes` of native memory at `pointer` (no copy). */
  view(pointer: unknown, bytes: number): ArrayBuffer;
}

let koffiModule: Koffi | null = null;

/** The koffi module, or a BackendError saying how to get it. */
export function koffi(): Koffi {
  if (koffiModule) return koffiModule;
  try {
    koffiModule = require('koffi') as Koffi;
  } catch (e) {
    throw new BackendError(`the cuda backend needs the koffi package (FFI): ${(e as Error).message.split('\n')[0]}; run npm ci`);
  }
  return koffiModule;
}

/** A CUDA library the backend looks for: its file names, newest first, and where users get it. */
export interface LibrarySpec {
  what: string;
  names: string[];
  /** Libraries opened first from the same folder, so that the dynamic loader finds them by soname. */
  companions?: string[];
  install: string;
}

export const CUDA_LIBRARIES = {
  driver: {
    what: 'the CUDA driver',
    names: ['libcuda.so.1', 'libcuda.so'],
    install: 'install the NVIDIA driver (it ships libcuda.so.1); in a container, run it with the GPU exposed (e.g. docker --gpus all)',
  },
  cublasLt: {
    what: 'cuBLASLt',
    names: ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so.11', 'libcublasLt.so'],
    install: 'install the CUDA toolkit (11.8 or newer), Debian/Ubuntu `libcublaslt11`, or `pip install nvidia-cublas-cu12`',
  },
  cublas: {
    what: 'cuBLAS',
    names: ['libcublas.so.13', 'libcublas.so.12', 'libcublas.so.11', 'libcublas.so'],
    install: 'install the CUDA toolkit (11.8 or newer), Debian/Ubuntu `libcublas11` (non-free), or `pip install nvidia-cublas-cu12`',
  },
  nvrtc: {
    what: 'NVRTC (the CUDA runtime compiler)',
    names: ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so.11.2', 'libnvrtc.so'],
    companions: [
      'libnvrtc-builtins.so.13.0',
      'libnvrtc-builtins.so.12.9',
      'libnvrtc-builtins.so.12.8',
      'libnvrtc-builtins.so.12.6',
      'libnvrtc-builtins.so.12.4',
      'libnvrtc-builtins.so.11.8',
      'libnvrtc-builtins.so',
    ],
    install: 'install the CUDA toolkit (11.8 or newer), Debian/Ubuntu `libnvrtc11.2` (non-free), or `pip install nvidia-cuda-nvrtc-cu12`',
  },
  nccl: {
    what: 'NCCL',
    names: ['libnccl.so.2', 'libnccl.so'],
    install: "install NCCL (Debian/Ubuntu `libnccl2`, NVIDIA's repository) or `pip install nvidia-nccl-cu12`",
  },
} satisfies Record<string, LibrarySpec>;

export type CudaLibraryName = keyof typeof CUDA_LIBRARIES;

/**
 * The folders searched, in order: DISTILL_CUDA_LIBS (a colon-separated list), CUDA_HOME / CUDA_PATH, every
 * /usr/local/cuda* toolkit, the dynamic loader's cache and LD_LIBRARY_PATH, and Python's nvidia-* wheels.
 */
export function searchFolders(env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  const add = (d: string | undefined): void => {
    if (d && !out.includes(d) && existsSync(d)) out.push(d);
  };
  for (const d of (env.DISTILL_CUDA_LIBS ?? '').split(':')) add(d);
  for (const home of [env.CUDA_HOME, env.CUDA_PATH]) {
    if (!home) continue;
    add(join(home, 'lib64'));
    add(join(home, 'targets', 'x86_64-linux', 'lib'));
    add(join(home, 'lib'));
  }
  let toolkits: string[] = [];
  try {
    toolkits = readdirSync('/usr/local')
      .filter((d) => d.startsWith('cuda'))
      .sort()
      .reverse();
  } catch {
    // no /usr/local
  }
  for (const t of toolkits) {
    add(join('/usr/local', t, 'lib64'));
    add(join('/usr/local', t, 'targets', 'x86_64-linux', 'lib'));
  }
  for (const d of (env.LD_LIBRARY_PATH ?? '').split(':')) add(d);
  for (const d of ['/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib', '/usr/local/nvidia/lib64', '/usr/lib/wsl/lib']) add(d);
  for (const site of pythonSitePackages()) {
    let wheels: string[] = [];
    try {
      wheels = readdirSync(join(site, 'nvidia'));
    } catch {
      continue;
    }
    for (const w of wheels) add(join(site, 'nvidia', w, 'lib'));
  }
  return out;
}

/** site-packages folders of the Pythons on this machine, found without running Python (which may be slow or absent). */
function pythonSitePackages(): string[] {
  const out: string[] = [];
  for (const root of ['/usr/local/lib', '/usr/lib', join(process.env.HOME ?? '/root', '.local', 'lib')]) {
    let entries: string[] = [];
    try {
      entries = readdirSync(root).filter((d) => /^python3(\.\d+)?$/.test(d));
    } catch {
      continue;
    }
    for (const e of entries) for (const s of ['site-packages', 'dist-packages']) if (existsSync(join(root, e, s))) out.push(join(root, e, s));
  }
  if (process.env.VIRTUAL_ENV) {
    try {
      for (const e of readdirSync(join(process.env.VIRTUAL_ENV, 'lib'))) out.push(join(process.env.VIRTUAL_ENV, 'lib', e, 'site-packages'));
    } catch {
      // not a venv layout
    }
  }
  return out;
}

/** Files the dynamic loader's cache knows by name (`ldconfig -p`), for libraries outside the usual folders. */
function loaderCache(): Map<string, string> {
  const out = new Map<string, string>();
  try {
    const text = execFileSync('/sbin/ldconfig', ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    for (const line of text.split('\n')) {
      const m = /^\s*(\S+) \(.*\) => (\S+)$/.exec(line);
      if (m && !out.has(m[1])) out.set(m[1], m[2]);
    }
  } catch {
    // no ldconfig: the folders above still count
  }
  return out;
}

/** Where `spec` lives here, or null. */
export function findLibrary(spec: LibrarySpec, folders: string[] = searchFolders()): string | null {
  for (const name of spec.names) {
    for (const d of folders) if (existsSync(join(d, name))) return join(d, name);
  }
  const cache = loaderCache();
  for (const name of spec.names) if (cache.has(name)) return cache.get(name)!;
  return null;
}

const opened = new Map<CudaLibraryName, NativeLibrary>();

/**
 * Opens one of the CUDA libraries (once per process). Throws a BackendError naming the library, the folders
 * searched and how to install it.
 */
export function openLibrary(name: CudaLibraryName): NativeLibrary {
  const have = opened.get(name);
  if (have) return have;
  const spec: LibrarySpec = CUDA_LIBRARIES[name];
  const k = koffi();
  const folders = searchFolders();
  const path = findLibrary(spec, folders);
  let lib: NativeLibrary | null = null;
  let failure = '';
  if (path) {
    const dir = path.slice(0, path.lastIndexOf('/'));
    for (const c of spec.companions ?? []) {
      if (existsSync(join(dir, c))) {
        try {
          k.load(join(dir, c));
        } catch {
          // the companion is optional; the library itself says if it misses it
        }
      }
    }
    try {
      lib = k.load(path);
    } catch (e) {
      failure = `${path} failed to load: ${(e as Error).message.split('\n')[0]}`;
    }
  } else if (name === 'driver') {
    // The driver is normally in the loader's default path; let dlopen search it too.
    try {
      lib = k.load(spec.names[0]);
    } catch {
      failure = `no NVIDIA driver here: the dynamic loader does not find ${spec.names[0]}, nor is it in ${folders.join(', ') || '(no folders)'}`;
    }
  }
  if (!lib) {
    const where = failure || `not found in ${folders.length ? folders.join(', ') : '(no folders)'} nor the dynamic loader's cache`;
    throw new BackendError(
      `${spec.names[0]} (${spec.what}) is missing (${where}). To use --backend cuda, ${spec.install}; or point DISTILL_CUDA_LIBS at the folder that holds it`,
    );
  }
  opened.set(name, lib);
  return lib;
}
