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
import type { RunResult } from '../train/runResult.ts';
import { DistillError } from '../errors.ts';
import { decodeMessage, encodeMessage } from './frameCodec.ts';
import { isOutgoingEnvelope, type IncomingEnvelope } from './ipcTransport.ts';
import { LAUNCHER, type WorkerMessage } from './messages.ts';
import { deviceEnv, placementOf, teacherWorkerFor } from '../parallel/placement.ts';
import { gpuIsolation } from './gpuIsolation.ts';
import { removeIncompleteCheckpoints } from '../parallel/checkpointHygiene.ts';
import { DEFAULT_BUCKET_BYTES } from '../parallel/gradientBuckets.ts';
import { nodeLaunchFromEnv, type NodeLaunch } from './launchEnv.ts';
import { coordsOf, type ParallelLayout } from '../parallel/layout.ts';
import { joinNodes, nodeLayout } from './rendezvous.ts';

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
  /** With --num_nodes > 1: this node's rank and the master (default: from the torchrun / Slurm environment). */
  node?: NodeLaunch;
  /**
   * The module each worker runs (a WorkerProgram, see worker.ts), by file path: the runtime forks processes and
   * relays frames, and what they compute is the caller's (pipelines/run.ts passes pipelines/workerProgram.ts).
   */
  program: string;
}

/** A worker process ended without finishing: killed, crashed, or out of memory. */
export class WorkerDiedError extends DistillError {}
/** A worker reported an error (its stack is in the message). */
export class WorkerFailedError extends DistillError {}

const WORKER_ENTRY = fileURLToPath(new URL('./worker.ts', import.meta.url));

interface Slot {
  info: WorkerInfo;
  what: string;
  child: ChildProcess;
  last: { note: string; at: number } | null;
  finished: boolean;
  exited: boolean;
}

export async function launchWorkers(recipe: DistillationRecipe, hooks: LaunchHooks): Promise<RunResult> {
  const log = hooks.log === undefined ? (l: string) => process.stderr.write(l + '\n') : (hooks.log ?? (() => {}));
  const p = placementOf(recipe);
  const runDir = join(recipe.logDir, recipe.name);
  // Several nodes: this launcher forks only its node's workers; frames for the others go over TCP (tcpTransport.ts).
  const { numNodes, devicesPerNode } = recipe.parallel;
  const layout = nodeLayout(p, devicesPerNode, numNodes);
  const nodes = numNodes > 1 ? await joinNodes(recipe, hooks.node ?? nodeLaunchFromEnv({ numNodes, devicesPerNode }), layout.nodeOf, log) : null;
  const here = (id: number): boolean => !nodes || layout.nodeOf(id) === nodes.nodeRank;
  const device = (id: number): number => (nodes ? layout.deviceIndex(id) : id);
  // Only node 0 (rank 0, the one writer of checkpoints) tidies them: another node could race its writes.
  const tidy = (): string[] => (!nodes || nodes.nodeRank === 0 ? removeIncompleteCheckpoints(runDir) : []);
  tidy();
  const group = Array.from({ length: p.studentWorkers }, (_, i) => i);
  const { tpSize, ppSize, cpSize } = recipe.parallel;
  // TP/PP/CP: every student worker is one rank of the layout (src/parallel/layout.ts), Megatron's rank order.
  const mpLayout: ParallelLayout | null = tpSize * ppSize * cpSize > 1 ? { tp: tpSize, cp: cpSize, dp: p.dpSize, pp: ppSize } : null;
  const tsx = import.meta.resolve('tsx');
  const slots: Slot[] = [];
  const total = p.studentWorkers + p.teacherWorkers;
  for (let id = 0; id < total; id++) {
    if (!here(id)) continue;
    const role = id < p.studentWorkers ? 'student' : 'teacher';
    const iso = gpuIsolation(recipe.backend, device(id));
    if ('none' in iso && recipe.backend === 'webgpu' && total > 1) log(`worker ${id}: not pinned to GPU ${device(id)} (${iso.none})`);
    const child = fork(WORKER_ENTRY, [String(id), hooks.program], {
      ...('none' in iso ? {} : { execPath: iso.execPath }),
      execArgv: ['--import', tsx],
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, ...deviceEnv(recipe.backend, device(id)), ...('none' in iso ? {} : iso.env), DISTILL_NO_PROGRESS: '1' },
    });
    const on = nodes ? `, node ${nodes.nodeRank}` : '';
    const c = mpLayout ? coordsOf(mpLayout, id) : null;
    const what = c
      ? `worker ${id} (tp ${c.tp}, cp ${c.cp}, dp ${c.dp}, pp stage ${c.pp}, pid ${child.pid}${on})`
      : role === 'student'
        ? `worker ${id} (student, data-parallel rank ${id} of ${p.dpSize}, pid ${child.pid}${on})`
        : `worker ${id} (teacher, pid ${child.pid}${on})`;
    slots.push({ info: { id, role, pid: child.pid ?? -1 }, what, child, last: null, finished: false, exited: false });
  }
  const slotOf = (id: number): Slot | undefined => slots.find((s) => s.info.id === id);
  const send = (to: number, m: WorkerMessage): void => {
    const s = slotOf(to);
    if (s && s.child.connected) s.child.send({ from: LAUNCHER, frame: encodeMessage(m) } satisfies IncomingEnvelope);
  };
  for (const s of slots) {
    const id = s.info.id;
    if (s.info.role === 'student' && mpLayout) {
      send(id, {
        kind: 'init',
        role: 'modelParallel',
        recipe,
        workerId: id,
        layout: mpLayout,
        deviceIndex: device(id),
        stopAfterSteps: hooks.stopAfterSteps ?? null,
      });
    } else if (s.info.role === 'student') {
      send(id, {
        kind: 'init',
        role: 'student',
        recipe,
        workerId: id,
        dpRank: id,
        dpSize: p.dpSize,
        group,
        deviceIndex: device(id),
        teacherWorker: teacherWorkerFor(id, p),
        stopAfterSteps: hooks.stopAfterSteps ?? null,
        bucketBytes: hooks.bucketBytes ?? DEFAULT_BUCKET_BYTES,
      });
    } else {
      const students = group.filter((r) => teacherWorkerFor(r, p) === id);
      send(id, { kind: 'init', role: 'teacher', recipe, workerId: id, deviceIndex: device(id), students });
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

    let settled = false;
    const settle = (): void => {
      // A node other than 0 also waits for node 0's 'finish', which brings rank 0's result.
      if (settled || slots.some((s) => !s.exited) || (nodes && !nodes.finished && !failure)) return;
      settled = true;
      process.off('SIGINT', onSigint);
      hooks.signal?.removeEventListener('abort', stop);
      nodes?.close();
      const removed = tidy();
      if (removed.length) log(`removed half-written checkpoint files: ${removed.join(', ')}`);
      if (failure) reject(failure);
      else if (result) resolve(result);
      else reject(new WorkerDiedError('every worker finished but rank 0 sent no result (a bug in src/runtime/worker.ts or the worker program)'));
    };
    const fail = (e: Error): void => {
      if (failure) return;
      failure = e;
      nodes?.abort(e);
      for (const s of slots) if (!s.exited) s.child.kill('SIGTERM');
      // A link failure can come after this node's workers have all exited (waiting for node 0's 'finish').
      if (nodes) settle();
    };
    const shutdownTeachers = (): void => {
      for (const t of slots) if (t.info.role === 'teacher') send(t.info.id, { kind: 'shutdown' });
    };
    nodes?.attach({
      relay: (from, to, frame) => {
        const target = slotOf(to);
        if (target?.child.connected) target.child.send({ from, frame } satisfies IncomingEnvelope);
      },
      failed: fail,
      finished: (r) => {
        result ??= r;
        shutdownTeachers();
        settle();
      },
    });
    const lastWords = (s: Slot): string =>
      s.last ? `its last message was ${s.last.note}, ${((Date.now() - s.last.at) / 1000).toFixed(1)} s before` : 'it sent no message';

    for (const s of slots) {
      const id = s.info.id;
      s.child.on('message', (v: unknown) => {
        if (!isOutgoingEnvelope(v)) return;
        s.last = { note: v.to === LAUNCHER ? v.note : `${v.note} to worker ${v.to}`, at: Date.now() };
        if (v.to !== LAUNCHER) {
          const target = slotOf(v.to);
          if (target?.child.connected) target.child.send({ from: id, frame: v.frame } satisfies IncomingEnvelope);
          else if (!target && nodes) nodes.relay(id, v.to, v.frame);
          return;
        }
        const m = decodeMessage(v.frame);
        switch (m.kind) {
          case 'log':
            log(id === 0 ? m.line : `[worker ${id}] ${m.line}`);
            break;
          case 'step':
            hooks.onStep?.(m.result);
            break;
          case 'error':
            fail(new WorkerFailedError(`${s.what} failed: ${m.name}: ${m.message}\n--- stack in worker ${id} ---\n${m.stack}`));
            break;
          case 'done':
            s.finished = true;
            if (m.result) result = m.result;
            s.child.disconnect();
            if (slots.filter((x) => x.info.role === 'student').every((x) => x.finished)) {
              // Several nodes: teachers may serve students elsewhere, so they stop when node 0 says every node is done.
              if (nodes) nodes.localDone(result);
              else shutdownTeachers();
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
          fail(
            new WorkerDiedError(
              `${s.what} ${how} before the run finished; ${lastWords(s)}. The run stopped; the last complete checkpoint in ` +
                `${join(runDir, 'checkpoints')} is intact, and running the same command again resumes from it.`,
            ),
          );
        }
        settle();
      });
    }
  });
}
