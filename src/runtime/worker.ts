/**
 * Entry of a worker process, forked by launcher.ts with `--import tsx`: argv[2] is the worker id, argv[3] the path
 * of the program to run (a module whose default export is a WorkerProgram; pipelines/workerProgram.ts for
 * `distill run`). This file is the process plumbing every worker shares: the IPC transport, the launcher's 'init',
 * log lines, and errors sent to the launcher with this worker's stack before the process ends.
 */
import { pathToFileURL } from 'node:url';
import type { RunResult } from '../train/runResult.ts';
import { IpcTransport } from './ipcTransport.ts';
import { LAUNCHER, type ModelParallelInit, type StudentInit, type TeacherInit } from './messages.ts';

/** What a worker process is given besides its init message. */
export interface WorkerContext {
  workerId: number;
  transport: IpcTransport;
  log: (line: string) => void;
}

/** One function per role; each returns rank 0's result (others: null) once the run is done. */
export interface WorkerProgram {
  student(init: StudentInit, w: WorkerContext): Promise<RunResult | null>;
  teacher(init: TeacherInit, w: WorkerContext): Promise<void>;
  modelParallel(init: ModelParallelInit, w: WorkerContext): Promise<RunResult | null>;
}

const workerId = Number(process.argv[2]);
const programPath = process.argv[3];
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

/** Each worker's peak resident memory, logged at its end (benchmarks/parallel reads it per layout). */
function logPeakMemory(): void {
  log(`worker ${workerId}: peak RSS ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB`);
}

const init = await transport.receive(LAUNCHER, 'init');
try {
  if (!programPath) throw new Error(`worker ${workerId} was started without a program (argv[3]); launchWorkers passes hooks.program`);
  const program = ((await import(pathToFileURL(programPath).href)) as { default: WorkerProgram }).default;
  const w: WorkerContext = { workerId, transport, log };
  if (init.role === 'teacher') {
    await program.teacher(init, w);
    finished = true;
    transport.send(LAUNCHER, { kind: 'done', result: null });
  } else {
    const result = init.role === 'student' ? await program.student(init, w) : await program.modelParallel(init, w);
    finished = true;
    logPeakMemory();
    transport.send(LAUNCHER, { kind: 'done', result });
  }
} catch (e) {
  reportError(e);
}
