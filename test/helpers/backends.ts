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

/** Calls `body` with each present backend selected; checks that the body leaks no tensors. */
export async function onEachBackend(body: (backend: BackendName) => Promise<void> | void): Promise<void> {
  for (const b of await backendsPresent()) {
    await selectBackend(b, { log: null, allowSoftwareAdapter: true });
    await body(b);
  }
}

export { tf };
