/**
 * CUDA C compiled at run time by NVRTC, for the device's own architecture, with the result cached on disk (keyed by
 * the source, the options, the architecture and NVRTC's version) so that a second start compiles nothing.
 *
 * Kernel sources include no header: pip's and distro NVRTC packages ship none, so the bf16/f16 conversions and the
 * few helpers we need are written in the sources themselves (kernels/prelude.ts).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BackendError } from '../../errors.ts';
import { openLibrary, type NativeFunction } from './libraries.ts';

interface NvrtcFunctions {
  version: NativeFunction;
  create: NativeFunction;
  compile: NativeFunction;
  destroy: NativeFunction;
  logSize: NativeFunction;
  log: NativeFunction;
  ptxSize: NativeFunction;
  ptx: NativeFunction;
  cubinSize: NativeFunction | null;
  cubin: NativeFunction | null;
  numArchs: NativeFunction | null;
  archs: NativeFunction | null;
  errorString: NativeFunction;
}

let bound: NvrtcFunctions | null = null;

function nvrtc(): NvrtcFunctions {
  if (bound) return bound;
  const lib = openLibrary('nvrtc');
  const f = (sig: string): NativeFunction => lib.func(sig);
  const optional = (sig: string): NativeFunction | null => {
    try {
      return lib.func(sig);
    } catch {
      return null;
    }
  };
  bound = {
    version: f('int nvrtcVersion(_Out_ int *major, _Out_ int *minor)'),
    create: f('int nvrtcCreateProgram(_Out_ void **prog, const char *src, const char *name, int numHeaders, void *headers, void *includeNames)'),
    compile: f('int nvrtcCompileProgram(void *prog, int numOptions, const char **options)'),
    destroy: f('int nvrtcDestroyProgram(_Inout_ void **prog)'),
    logSize: f('int nvrtcGetProgramLogSize(void *prog, _Out_ size_t *size)'),
    log: f('int nvrtcGetProgramLog(void *prog, _Out_ uint8_t *log)'),
    ptxSize: f('int nvrtcGetPTXSize(void *prog, _Out_ size_t *size)'),
    ptx: f('int nvrtcGetPTX(void *prog, _Out_ uint8_t *ptx)'),
    cubinSize: optional('int nvrtcGetCUBINSize(void *prog, _Out_ size_t *size)'),
    cubin: optional('int nvrtcGetCUBIN(void *prog, _Out_ uint8_t *cubin)'),
    numArchs: optional('int nvrtcGetNumSupportedArchs(_Out_ int *n)'),
    archs: optional('int nvrtcGetSupportedArchs(_Out_ int *archs)'),
    errorString: f('const char *nvrtcGetErrorString(int result)'),
  };
  return bound;
}

/** A kernel source that did not compile: the NVRTC log, with the source's name and the line it names. */
export class KernelCompileError extends BackendError {
  constructor(
    readonly kernel: string,
    readonly log: string,
  ) {
    super(`CUDA kernel ${kernel} did not compile:\n${log.trim()}`);
  }
}

export function nvrtcVersion(): string {
  const major = [0];
  const minor = [0];
  nvrtc().version(major, minor);
  return `${major[0]}.${minor[0]}`;
}

/** The architectures this NVRTC can target (e.g. [50, ..., 90]); empty if it cannot say (NVRTC before 11.2). */
export function supportedArchitectures(): number[] {
  const n = nvrtc();
  if (!n.numArchs || !n.archs) return [];
  const count = [0];
  n.numArchs(count);
  const out = new Int32Array(count[0]);
  n.archs(out);
  return [...out];
}

export interface CompiledKernel {
  /** A cubin for `sm_XY`, or PTX for `compute_XY` that the driver compiles on load. */
  image: Uint8Array;
  kind: 'cubin' | 'ptx';
}

function check(call: string, code: unknown): void {
  if (code !== 0) throw new BackendError(`${call} failed: ${String(nvrtc().errorString(Number(code)))}`);
}

/**
 * Compiles `source` for compute capability `arch` (e.g. 90). A cubin where the device's architecture is one NVRTC
 * knows (no JIT at load, and no PTX newer than the driver), PTX for the newest architecture it knows otherwise.
 */
export function compileCuda(name: string, source: string, arch: number, kind: 'cubin' | 'ptx' = 'cubin'): CompiledKernel {
  const n = nvrtc();
  const known = supportedArchitectures();
  const target = known.length && !known.includes(arch) ? Math.max(...known.filter((a) => a <= arch)) : arch;
  const asCubin = kind === 'cubin' && target === arch && n.cubin !== null && n.cubinSize !== null;
  const options = [asCubin ? `--gpu-architecture=sm_${target}` : `--gpu-architecture=compute_${target}`, '--std=c++14'];
  const prog: unknown[] = [null];
  check('nvrtcCreateProgram', n.create(prog, source, `${name}.cu`, 0, null, null));
  try {
    const code = n.compile(prog[0], options.length, options);
    if (code !== 0) {
      const size = [0];
      n.logSize(prog[0], size);
      const log = Buffer.alloc(Number(size[0]));
      n.log(prog[0], log);
      throw new KernelCompileError(name, log.toString('utf8').replace(/\0+$/, ''));
    }
    const size = [0];
    const image = asCubin
      ? (check('nvrtcGetCUBINSize', n.cubinSize!(prog[0], size)), Buffer.alloc(Number(size[0])))
      : (check('nvrtcGetPTXSize', n.ptxSize(prog[0], size)), Buffer.alloc(Number(size[0])));
    check(asCubin ? 'nvrtcGetCUBIN' : 'nvrtcGetPTX', asCubin ? n.cubin!(prog[0], image) : n.ptx(prog[0], image));
    return { image, kind: asCubin ? 'cubin' : 'ptx' };
  } finally {
    n.destroy(prog);
  }
}

/** Where compiled kernels are kept: DISTILL_CUDA_CACHE, else $XDG_CACHE_HOME or ~/.cache, under logit-distill/cuda. */
export function kernelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DISTILL_CUDA_CACHE ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'logit-distill', 'cuda');
}

/** compileCuda through the on-disk cache. A cache that cannot be written is not an error: we compile each time. */
export function compileCached(name: string, source: string, arch: number): CompiledKernel {
  const version = nvrtcVersion();
  const key = createHash('sha256').update(`${version}\n${arch}\n${source}`).digest('hex').slice(0, 32);
  const dir = kernelCacheDir();
  for (const kind of ['cubin', 'ptx'] as const) {
    try {
      return { image: readFileSync(join(dir, `${name}-${key}.${kind}`)), kind };
    } catch {
      // not cached as this kind
    }
  }
  const compiled = compileCuda(name, source, arch);
  try {
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${name}-${key}.${compiled.kind}`);
    // Written aside and renamed, so that two processes starting together never read half a file.
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, compiled.image);
    renameSync(tmp, file);
  } catch {
    // read-only home: fine
  }
  return compiled;
}
