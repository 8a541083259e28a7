/**
 * Runs a recipe on several worker processes of this node: forks one per device (students, then teachers), gives
 * each its role, relays frames between them, and returns rank 0's result. A worker that dies or fails ends the
 * run with an error naming it and its last message; the others are stopped, half-written checkpoints removed,
 * and rerunning the same command resumes from the last complete checkpoint.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StepResult } from '../train/batch.ts';
import type { DistillationRecipe } from '../recipe/config.ts';
import type { RunResult } from '../../pipelines/run.ts';
import { ConfigError, DistillError } from '../errors.ts';
import { decodeMessage, encodeMessage } from './frameCodec.ts';
import { isOutgoingEnvelope, type IncomingEnvelope } from './ipcTransport.ts';
import { LAUNCHER, type WorkerMessage } from './messages.ts';
import { deviceEnv, placementOf, teacherWorkerFor } from './placement.ts';
import { removeIncompleteCheckpoints } from './checkpointHygiene.ts';
import { DEFAULT_BUCKET_BYTES } from './gradientBuckets.ts';

export interface WorkerInfo {
  id: number;
  role: 'student' | 'teacher';
  pid: number;
}

export interface LaunchHooks {
  log?: ((line: string) => void) | null;
  signal?: AbortSignal;
  onStep?: (result: StepResult) => void;
  stopAfterSteps?: number;
  /** Called once every worker has been started (tests use the pids). */
  onWorkers?: (workers: WorkerInfo[]) => void;
  /** Bytes per all-reduce bucket (default 4 MiB). */
  bucketBytes?: number;
}

/** A worker process ended without finishing: killed, crashed, or out of memory. */
export class WorkerDiedError extends DistillError {}
/** A worker reported an error (its stack is in the message). */
export class WorkerFailedError extends DistillError {}

const WORKER_ENTRY = fileURLToPath(new URL('../../pipelines/worker.ts', import.meta.url));

interface Slot {
  info: WorkerInfo;
  what: string;
  child: ChildProcess;
  last: { note: string; at: number } | null;
  finished: boolean;
  exited: boolean;
}

export async function launchWorkers(recipe: DistillationRecipe, hooks: LaunchHooks = {}): Promise<RunResult> {
  const log = hooks.log === undefined ? (l: string) => process.stderr.write(l + '\n') : hooks.log ?? (() => {});
  if (recipe.parallel.numNodes > 1) {
    throw new ConfigError(`--num_nodes ${recipe.parallel.numNodes}: workers on several nodes need the TCP transport, which is not implemented yet; run one node with --devices N (the Transport interface in src/parallel/transport.ts is where it plugs in)`);
  }
  const p = placementOf(recipe);
  const runDir = join(recipe.logDir, recipe.name);
  removeIncompleteCheckpoints(runDir);
  const group = Array.from({ length: p.studentWorkers }, (_, i) => i);
  const tsx = import.meta.resolve('tsx');
  const slots: Slot[] = [];
  const total = p.studentWorkers + p.teacherWorkers;
  for (let id = 0; id < total; id++) {
    const role = id < p.studentWorkers ? 'student' : 'teacher';
    const child = fork(WORKER_ENTRY, [String(id)], {
      execArgv: ['--import', tsx],
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, ...deviceEnv(recipe.backend, id), DISTILL_NO_PROGRESS: '1' },
    });
    const what = role === 'student' ? `worker ${id} (student, data-parallel rank ${id} of ${p.dpSize}, pid ${child.pid})` : `worker ${id} (teacher, pid ${child.pid})`;
    slots.push({ info: { id, role, pid: child.pid ?? -1 }, what, child, last: null, finished: false, exited: false });
  }
  const send = (to: number, m: WorkerMessage): void => {
    const s = slots[to];
    if (s && s.child.connected) s.child.send({ from: LAUNCHER, frame: encodeMessage(m) } satisfies IncomingEnvelope);
  };
  for (const s of slots) {
    const id = s.info.id;
    if (s.info.role === 'student') {
      send(id, {
        kind: 'init', role: 'student', recipe, workerId: id, dpRank: id, dpSize: p.dpSize, group, deviceIndex: id,
        teacherWorker: teacherWorkerFor(id, p), stopAfterSteps: hooks.stopAfterSteps ?? null, bucketBytes: hooks.bucketBytes ?? DEFAULT_BUCKET_BYTES,
      });
    } else {
      const students = group.filter((r) => teacherWorkerFor(r, p) === id);
      send(id, { kind: 'init', role: 'teacher', recipe, workerId: id, deviceIndex: id, students });
    }
  }
  hooks.onWorkers?.(slots.map((s) => s.info));

  return await new Promise<RunResult>((resolve, reject) => {
    let failure: Error | null = null;
    let result: RunResult | null = null;
    const stop = (): void => {
      log('stopping: the workers finish the steps in flight, then rank 0 writes a checkpoint');
      for (const id of group) send(id, { kind: 'stop' });
    };
    const onSigint = (): void => stop();
    process.on('SIGINT', onSigint);
    hooks.signal?.addEventListener('abort', stop, { once: true });
    if (hooks.signal?.aborted) stop();

    const settle = (): void => {
      if (slots.some((s) => !s.exited)) return;
      process.off('SIGINT', onSigint);
      hooks.signal?.removeEventListener('abort', stop);
      const removed = removeIncompleteCheckpoints(runDir);
      if (removed.length) log(`removed half-written checkpoint files: ${removed.join(', ')}`);
      if (failure) reject(failure);
      else if (result) resolve(result);
      else reject(new WorkerDiedError('every worker finished but rank 0 sent no result (a bug in pipelines/worker.ts)'));
    };
    const fail = (e: Error): void => {
      if (failure) return;
      failure = e;
      for (const s of slots) if (!s.exited) s.child.kill('SIGTERM');
    };
    const lastWords = (s: Slot): string =>
      s.last ? `its last message was ${s.last.note}, ${((Date.now() - s.last.at) / 1000).toFixed(1)} s before` : 'it sent no message';

    for (const s of slots) {
      const id = s.info.id;
      s.child.on('message', (v: unknown) => {
        if (!isOutgoingEnvelope(v)) return;
        s.last = { note: v.to === LAUNCHER ? v.note : `${v.note} to worker ${v.to}`, at: Date.now() };
        if (v.to !== LAUNCHER) {
          const target = slots[v.to];
          if (target?.child.connected) target.child.send({ from: id, frame: v.frame } satisfies IncomingEnvelope);
          return;
        }
        const m = decodeMessage(v.frame);
        switch (m.kind) {
          case 'log': log(id === 0 ? m.line : `[worker ${id}] ${m.line}`); break;
          case 'step': hooks.onStep?.(m.result); break;
          case 'error':
            fail(new WorkerFailedError(`${s.what} failed: ${m.name}: ${m.message}\n--- stack in worker ${id} ---\n${m.stack}`));
            break;
          case 'done':
            s.finished = true;
            if (m.result) result = m.result;
            s.child.disconnect();
            if (slots.filter((x) => x.info.role === 'student').every((x) => x.finished)) {
              for (const t of slots) if (t.info.role === 'teacher') send(t.info.id, { kind: 'shutdown' });
            }
            break;
          default:
            fail(new WorkerFailedError(`${s.what} sent the launcher an unexpected '${m.kind}' message (a bug)`));
        }
      });
      s.child.on('error', (e) => fail(new WorkerDiedError(`${s.what} could not be started or reached: ${e.message}`)));
      s.child.on('exit', (code, signal) => {
        s.exited = true;
        if (!s.finished && !failure) {
          const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
          fail(new WorkerDiedError(
            `${s.what} ${how} before the run finished; ${lastWords(s)}. The run stopped; the last complete checkpoint in ` +
              `${join(runDir, 'checkpoints')} is intact, and running the same command again resumes from it.`,
          ));
        }
        settle();
      });
    }
  });
}
