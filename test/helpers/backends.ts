/**
 * Runs a test body once on each tfjs backend present here (cpu and wasm always; webgpu where a Vulkan driver is),
 * as tfjs-core's own tests do with describeWithFlags. The backend is tfjs's global state, so bodies run in turn.
 */
import * as tf from '@tensorflow/tfjs-core';
import { availableBackends, selectBackend, type BackendName } from '../../src/backend/select.ts';

let present: BackendName[] | null = null;

export async function backendsPresent(): Promise<BackendName[]> {
  if (!present) {
    const only = process.env.DISTILL_TEST_BACKENDS;
    present = only ? (only.split(',') as BackendName[]) : await availableBackends({ log: null });
  }
  return present;
}

/** Calls `body` with each present backend selected, in turn. (It checks no leaks: the bodies count tensors themselves.) */
export async function onEachBackend(body: (backend: BackendName) => Promise<void> | void): Promise<void> {
  for (const b of await backendsPresent()) {
    await selectBackend(b, { log: null, allowSoftwareAdapter: true });
    await body(b);
  }
}

/**
 * Host copies of `tensors`, read asynchronously, and then disposes them. tfjs-webgpu in Node has no synchronous
 * read-back (dataSync goes through an OffscreenCanvas, which Node lacks), so a body computes in a tf.tidy, returns
 * what it checks, and reads it here after the tidy.
 */
export async function readAndDispose(tensors: tf.Tensor[]): Promise<tf.TypedArray[]> {
  try {
    return await Promise.all(tensors.map((t) => t.data()));
  } finally {
    tf.dispose(tensors);
  }
}

/** The values of scalar (or one-element) tensors, read as readAndDispose does. */
export async function readScalars(tensors: tf.Tensor[]): Promise<number[]> {
  return (await readAndDispose(tensors)).map((d) => d[0]);
}

/** Every tensor inside `v` (a tensor, or arrays and objects holding tensors). */
export function tensorsIn(v: unknown, out: tf.Tensor[] = []): tf.Tensor[] {
  if (v instanceof tf.Tensor) out.push(v);
  else if (Array.isArray(v)) for (const x of v) tensorsIn(x, out);
  else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) tensorsIn(x, out);
  return out;
}

/**
 * Runs `f` in a tf.tidy and keeps every tensor in what it returns, typed as `f` returns it (tf.tidy only takes
 * TensorContainers, which interfaces such as TopKTargets are not). For inputs that must outlive a host read in the
 * middle of a body, since a tidy cannot span an await; the caller disposes them, e.g. tf.dispose(tensorsIn(x)).
 * Return only tensors that `f` makes: tf.keep exempts a tensor from every tidy, an enclosing one's included.
 */
export function tidyKeep<T>(f: () => T): T {
  let result: T | undefined;
  tf.tidy(() => {
    result = f();
    for (const t of tensorsIn(result)) tf.keep(t);
  });
  return result as T;
}

export { tf };
