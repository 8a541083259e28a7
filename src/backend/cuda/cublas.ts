/**
 * cuBLAS through koffi: one handle on the backend's stream, and the one call every product goes through,
 * cublasGemmStridedBatchedEx (all transposes, batches, and broadcast batches as stride 0, without copies).
 * fp32 computes in fp32 (CUBLAS_COMPUTE_32F without TF32) so that logits match the fixtures; the mixed precisions
 * take bf16 or f16 operands with fp32 accumulation and output, as PyTorch's autocast does.
 */
import { BackendError } from '../../errors.ts';
import { openLibrary, type NativeFunction } from './libraries.ts';
import type { Handle } from './driver.ts';

/** cudaDataType values (library_types.h). */
export const CUDA_R_32F = 0;
export const CUDA_R_16F = 2;
export const CUDA_R_16BF = 14;
/** cublasComputeType_t CUBLAS_COMPUTE_32F: fp32 accumulation, no TF32. */
export const CUBLAS_COMPUTE_32F = 68;
/** fp32 operands that cuBLAS itself rounds to f16 / bf16 for the tensor cores, fp32 accumulation. */
export const CUBLAS_COMPUTE_32F_FAST_16F = 74;
export const CUBLAS_COMPUTE_32F_FAST_16BF = 75;
/** cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT. */
const GEMM_DEFAULT = -1;
const OP_N = 0;
const OP_T = 1;

interface CublasFunctions {
  create: NativeFunction;
  setStream: NativeFunction;
  setWorkspace: NativeFunction | null;
  getVersion: NativeFunction;
  gemm: NativeFunction;
  statusName: NativeFunction | null;
}

export interface GemmOperand {
  ptr: bigint;
  /** CUDA_R_32F, CUDA_R_16BF or CUDA_R_16F. */
  type: number;
  transposed: boolean;
  /** Elements between consecutive matrices of the batch; 0 broadcasts one matrix to all. */
  batchStride: number;
}

export class Cublas {
  private readonly fn: CublasFunctions;
  private readonly handle: Handle;
  private readonly one = new Float32Array([1]);
  private readonly zero = new Float32Array([0]);
  readonly version: number;

  /** `workspace`: device memory cuBLAS may use for its faster algorithms (split-K and the like), as PyTorch gives it. */
  constructor(stream: Handle, workspace?: { ptr: bigint; bytes: number }) {
    // cuBLAS loads cuBLASLt by its soname: open it first from wherever it was found.
    openLibrary('cublasLt');
    const lib = openLibrary('cublas');
    const optional = (sig: string): NativeFunction | null => {
      try {
        return lib.func(sig);
      } catch {
        return null;
      }
    };
    this.fn = {
      create: lib.func('int cublasCreate_v2(_Out_ void **handle)'),
      setStream: lib.func('int cublasSetStream_v2(void *handle, void *stream)'),
      setWorkspace: optional('int cublasSetWorkspace_v2(void *handle, uint64_t workspace, size_t bytes)'),
      getVersion: lib.func('int cublasGetVersion_v2(void *handle, _Out_ int *version)'),
      gemm: lib.func(
        'int cublasGemmStridedBatchedEx(void *handle, int transa, int transb, int m, int n, int k, const float *alpha, uint64_t A, int Atype, int lda, int64_t strideA, uint64_t B, int Btype, int ldb, int64_t strideB, const float *beta, uint64_t C, int Ctype, int ldc, int64_t strideC, int batchCount, int computeType, int algo)',
      ),
      statusName: optional('const char *cublasGetStatusName(int status)'),
    };
    const h: Handle[] = [null];
    this.check('cublasCreate', this.fn.create(h));
    this.handle = h[0];
    this.check('cublasSetStream', this.fn.setStream(this.handle, stream));
    if (workspace && workspace.bytes > 0 && this.fn.setWorkspace)
      this.check('cublasSetWorkspace', this.fn.setWorkspace(this.handle, workspace.ptr, workspace.bytes));
    const v = [0];
    this.check('cublasGetVersion', this.fn.getVersion(this.handle, v));
    this.version = v[0];
  }

  private check(call: string, status: unknown): void {
    if (status === 0) return;
    const name = this.fn.statusName ? String(this.fn.statusName(Number(status))) : `cublasStatus ${String(status)}`;
    throw new BackendError(`${call} failed: ${name}`);
  }

  /**
   * Row-major C[b] = op(A[b]) · op(B[b]) for b < batch, C fp32 [m, n], op(A) [m, k], op(B) [k, n]. cuBLAS is
   * column-major, so it computes Cᵀ = op(B)ᵀ · op(A)ᵀ: the operands swap and each keeps its own transpose flag.
   */
  gemm(c: bigint, a: GemmOperand, b: GemmOperand, m: number, n: number, k: number, batch: number, computeType = CUBLAS_COMPUTE_32F): void {
    const lda = a.transposed ? m : k;
    const ldb = b.transposed ? k : n;
    const status = this.fn.gemm(
      this.handle,
      b.transposed ? OP_T : OP_N,
      a.transposed ? OP_T : OP_N,
      n,
      m,
      k,
      this.one,
      b.ptr,
      b.type,
      ldb,
      b.batchStride,
      a.ptr,
      a.type,
      lda,
      a.batchStride,
      this.zero,
      c,
      CUDA_R_32F,
      n,
      m * n,
      batch,
      computeType,
      GEMM_DEFAULT,
    );
    // The call's name is formatted only on failure: this runs hundreds of times a step.
    if (status !== 0) this.check(`cublasGemmStridedBatchedEx([${batch}] ${m}x${k} · ${k}x${n})`, status);
  }
}
