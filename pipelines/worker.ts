/**
 * Entry of a worker process (forked by launcher.ts with `--import tsx`; argv[2] is the worker id). A student runs
 * the same run() as a single process, as one data-parallel rank; a teacher serves hidden states to its students.
 * Any error goes to the launcher with this worker's stack before the process ends.
 */
import { run } from './run.ts';
import { selectBackend } from '../src/backend/select.ts';
import { loadModel } from '../src/checkpoint/load.ts';
import { DataParallelRank } from '../src/parallel/dataParallelRank.ts';
import { IpcTransport } from '../src/parallel/ipcTransport.ts';
import { LAUNCHER, type ModelParallelInit, type StudentInit, type TeacherInit } from '../src/parallel/messages.ts';
import { runModelParallelRank } from './modelParallelRun.ts';
import { RemoteTeacher } from '../src/parallel/remoteTeacher.ts';
import { serveTeacher } from '../src/parallel/teacherServer.ts';
import { TransportClosedError } from '../src/parallel/transport.ts';

const workerId = Number(process.argv[2]);
const transport = new IpcTransport(workerId);
let finished = false;

// The launcher disconnects a worker after its 'done'; a disconnect before that means the launcher is gone.
process.on('disconnect', () => process.exit(finished ? 0 : 1));

const log = (line: string): void => transport.send(LAUNCHER, { kind: 'log', line });

function reportError(e: unknown): void {
  const err = e instanceof Error ? e : new Error(String(e));
  try {
    transport.send(LAUNCHER, { kind: 'error', name: err.name, message: err.message, stack: err.stack ?? '(no stack)' });
  } catch {
    process.exit(1);
  }
  // The launcher stops every worker once it has the error; this is only a fallback if it never comes.
  setTimeout(() => process.exit(1), 10_000).unref();
}
process.on('uncaughtException', reportError);
process.on('unhandledRejection', reportError);

async function student(init: StudentInit): Promise<void> {
  const ac = new AbortController();
  const dp = new DataParallelRank({
    transport, dpRank: init.dpRank, dpSize: init.dpSize, group: init.group, deviceIndex: init.deviceIndex,
    globalBatchSize: init.recipe.trainer.globalBatchSize, microBatchSize: init.recipe.trainer.microBatchSize,
    bucketBytes: init.bucketBytes,
    remoteTeacher: init.teacherWorker === null ? undefined : new RemoteTeacher(transport, init.teacherWorker),
    onStopAgreed: () => ac.abort(),
  });
  transport.receive(LAUNCHER, 'stop').then(() => dp.requestStop(), () => {});
  const result = await run(init.recipe, {
    log, dataParallel: dp, signal: ac.signal, progress: false, stopAfterSteps: init.stopAfterSteps ?? undefined,
    onStep: dp.leader ? (r) => transport.send(LAUNCHER, { kind: 'step', result: r }) : undefined,
  });
  dp.remoteTeacher?.dispose();
  finished = true;
  logPeakMemory();
  transport.send(LAUNCHER, { kind: 'done', result: dp.leader ? result : null });
}

async function teacher(init: TeacherInit): Promise<void> {
  transport.receive(LAUNCHER, 'shutdown').then(() => transport.close(new TransportClosedError('the launcher shut this teacher down')), () => {});
  if (!init.recipe.teacherPath) throw new Error(`teacher worker ${workerId}: the recipe has no teacherPath`);
  await selectBackend(init.recipe.backend, { log, adapterIndex: init.deviceIndex, precision: init.recipe.trainer.precision });
  const model = await loadModel(init.recipe.teacherPath, { trainable: false });
  const served = await serveTeacher(transport, model, init.students);
  model.dispose();
  log(`teacher worker ${workerId}: served ${served} micro-batches`);
  finished = true;
  transport.send(LAUNCHER, { kind: 'done', result: null });
}

async function modelParallel(init: ModelParallelInit): Promise<void> {
  let stop = false;
  transport.receive(LAUNCHER, 'stop').then(() => { stop = true; }, () => {});
  const result = await runModelParallelRank(init.recipe, {
    transport, layout: init.layout, rank: workerId, deviceIndex: init.deviceIndex, log, stopAfterSteps: init.stopAfterSteps ?? undefined,
    onStep: (r) => transport.send(LAUNCHER, { kind: 'step', result: r }), stopRequested: () => stop,
  });
  finished = true;
  logPeakMemory();
  transport.send(LAUNCHER, { kind: 'done', result });
}

/** Each worker's peak resident memory, logged at its end (benchmarks/parallel reads it per layout). */
function logPeakMemory(): void {
  log(`worker ${workerId}: peak RSS ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB`);
}

const init = await transport.receive(LAUNCHER, 'init');
try {
  await (init.role === 'student' ? student(init) : init.role === 'teacher' ? teacher(init) : modelParallel(init));
} catch (e) {
  reportError(e);
}
