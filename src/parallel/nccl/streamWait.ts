/**
 * Waiting for a CUDA stream without blocking Node's thread: cuStreamQuery polled between turns of the event
 * loop, so that heartbeats, the launcher's messages and a timeout still run while NCCL works (cuStreamSynchronize
 * would block the process for as long as a hung peer keeps the collective open). Bound here, from the driver
 * library the cuda backend already opened, because the backend's driver does not bind it.
 */
import { openLibrary, type NativeFunction } from '../../backend/cuda/libraries.ts';

export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_NOT_READY = 600;

let query: NativeFunction | null = null;

/** cuStreamQuery: CUDA_SUCCESS when all the stream's work is done, CUDA_ERROR_NOT_READY while some runs, else an error code. */
export function streamQuery(stream: unknown): number {
  query ??= openLibrary('driver').func('int cuStreamQuery(void *stream)');
  return Number(query(stream));
}

/** Resolves after a short pause: the next turn of the event loop for the first millisecond, then 1 ms steps. */
export function pause(waitedMs: number): Promise<void> {
  return new Promise((resolve) => (waitedMs < 1 ? setImmediate(resolve) : setTimeout(resolve, 1)));
}
