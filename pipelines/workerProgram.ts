/**
 * What a worker of `distill run` computes (src/runtime/worker.ts runs it): a student is one data-parallel rank
 * of the same run as a single process; a model-parallel worker is one rank of a TP/PP/CP layout; a teacher serves
 * hidden states to its students.
 */
import { selectBackend } from '../src/backend/select.ts';
import { loadModel } from '../src/checkpoint/load.ts';
import { DataParallelRank } from '../src/parallel/dataParallelRank.ts';
import { RemoteTeacher } from '../src/parallel/remoteTeacher.ts';
import { serveTeacher } from '../src/parallel/teacherServer.ts';
import { LAUNCHER } from '../src/runtime/messages.ts';
import { TransportClosedError } from '../src/runtime/transport.ts';
import type { WorkerProgram } from '../src/runtime/worker.ts';
import { distillInThisProcess } from './distill.ts';
import { runModelParallelRank } from './modelParallelRun.ts';

const program: WorkerProgram = {
  async student(init, { transport, log }) {
    const ac = new AbortController();
    const dp = new DataParallelRank({
      transport,
      dpRank: init.dpRank,
      dpSize: init.dpSize,
      group: init.group,
      deviceIndex: init.deviceIndex,
      globalBatchSize: init.recipe.trainer.globalBatchSize,
      microBatchSize: init.recipe.trainer.microBatchSize,
      bucketBytes: init.bucketBytes,
      overlapGradReduce: init.recipe.parallel.overlapGradReduce,
      remoteTeacher: init.teacherWorker === null ? undefined : new RemoteTeacher(transport, init.teacherWorker),
      onStopAgreed: () => ac.abort(),
    });
    transport.receive(LAUNCHER, 'stop').then(
      () => dp.requestStop(),
      () => {},
    );
    const result = await distillInThisProcess(
      init.recipe,
      {
        log,
        signal: ac.signal,
        progress: false,
        stopAfterSteps: init.stopAfterSteps ?? undefined,
        onStep: dp.leader ? (r) => transport.send(LAUNCHER, { kind: 'step', result: r }) : undefined,
      },
      dp,
    );
    dp.remoteTeacher?.dispose();
    await dp.dispose();
    return dp.leader ? result : null;
  },

  async teacher(init, { transport, log, workerId }) {
    transport.receive(LAUNCHER, 'shutdown').then(
      () => transport.close(new TransportClosedError('the launcher shut this teacher down')),
      () => {},
    );
    if (!init.recipe.teacherPath) throw new Error(`teacher worker ${workerId}: the recipe has no teacherPath`);
    await selectBackend(init.recipe.backend, { log, adapterIndex: init.deviceIndex, precision: init.recipe.trainer.precision });
    const model = await loadModel(init.recipe.teacherPath, { trainable: false });
    // Joins each student's pair here (NCCL on cuda, frames elsewhere) and logs which one each student got.
    const served = await serveTeacher(transport, model, init.students, { log });
    model.dispose();
    log(`teacher worker ${workerId}: served ${served} micro-batches`);
  },

  async modelParallel(init, { transport, log, workerId }) {
    let stop = false;
    transport.receive(LAUNCHER, 'stop').then(
      () => {
        stop = true;
      },
      () => {},
    );
    return runModelParallelRank(init.recipe, {
      transport,
      layout: init.layout,
      rank: workerId,
      deviceIndex: init.deviceIndex,
      log,
      stopAfterSteps: init.stopAfterSteps ?? undefined,
      onStep: (r) => transport.send(LAUNCHER, { kind: 'step', result: r }),
      stopRequested: () => stop,
    });
  },
};

export default program;
