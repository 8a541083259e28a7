/**
 * Pipeline parallelism's transfers over communicators (DeviceCollectives.stageExchange: ncclSend/ncclRecv in one
 * group on the PP group's communicator, device to device on cuda), checked on CPU:
 *
 * - The stages' plans of transfers (pipelineSchedule.ts, withTransfers) cannot deadlock under NCCL's rules: each
 *   rank runs its groups in order on one stream, and a group finishes only when the peer has reached the group
 *   that holds the matching send or receive. A simulation of those rules runs every plan to the end for 2 to 6
 *   stages and 1 to 8 micro-batches; the same transfers sent one by one deadlock (1F1B's steady state), which
 *   the simulation must see.
 * - PP 2 with the in-process fake communicator standing in for NCCL: 5 KD steps on the fixture pair give one
 *   worker's losses, grad norms and weights, no activation crosses as a frame, and a validation pass gives the
 *   frames path's numbers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { coordsOf, worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { ModelParallelTrainer } from '../../src/parallel/modelParallel/modelParallelTrainer.ts';
import { oneForwardOneBackward, withTransfers, type PipelineStep, type StageTransfer } from '../../src/parallel/modelParallel/pipelineSchedule.ts';
import { gatherFullState, loadShardedPair } from '../../src/parallel/modelParallel/shardedWeights.ts';
import { DeviceCollectives } from '../../src/parallel/nccl/deviceCollectives.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import type { Transport } from '../../src/runtime/transport.ts';
import type { StepResult, TokenBatch } from '../../src/train/batch.ts';
import { expectedJson, fixture } from '../helpers/fixtures.ts';
import { assertSteps, assertWeights, fixtureLoss, oneWorker, pairBatches } from './modelParallelHarness.ts';

await selectBackend('cpu', { log: null });

// ---- The plans under NCCL's rules ----

/** One transfer as the wire sees it: which stage sends to which, and the how-many-th on that link. */
interface Op {
  from: number;
  to: number;
  index: number;
}

/** Each stage's groups of transfers, the computations dropped (they wait for nothing but their inputs). */
function groupsOf(plans: PipelineStep[][]): { sends: Op[]; receives: Op[] }[][] {
  const count = new Map<string, number>();
  const next = (from: number, to: number, side: string): number => {
    const k = `${from}->${to} ${side}`;
    const n = count.get(k) ?? 0;
    count.set(k, n + 1);
    return n;
  };
  return plans.map((plan, s) =>
    plan.flatMap((step) => {
      if (step.kind !== 'exchange') return [];
      const peer = (t: StageTransfer): number => s + (t.peer === 'next' ? 1 : -1);
      return [
        {
          sends: step.sends.map((t) => ({ from: s, to: peer(t), index: next(s, peer(t), 'send') })),
          receives: step.receives.map((t) => ({ from: peer(t), to: s, index: next(peer(t), s, 'receive') })),
        },
      ];
    }),
  );
}

/**
 * Runs every stage's groups under NCCL's rules: a stage works on one group at a time, in order; a transfer
 * completes once both its ends have reached the groups that hold it; a group ends when all its transfers have.
 * Returns the stages stuck (with the group each waits in) when no group can end any more, or [] when all ended.
 */
function simulate(plans: PipelineStep[][]): string[] {
  const groups = groupsOf(plans);
  const at = groups.map(() => 0);
  const where = new Map<string, number>(); // "from->to #i send|receive" → the sender's or receiver's group index
  for (const gs of groups)
    gs.forEach((g, i) => {
      for (const o of g.sends) where.set(`${o.from}->${o.to} #${o.index} send`, i);
      for (const o of g.receives) where.set(`${o.from}->${o.to} #${o.index} receive`, i);
    });
  const reached = (stage: number, group: number | undefined): boolean => group !== undefined && at[stage] >= group;
  for (;;) {
    let moved = false;
    groups.forEach((gs, s) => {
      const g = gs[at[s]];
      if (!g) return;
      const sendsMet = g.sends.every((o) => reached(o.to, where.get(`${o.from}->${o.to} #${o.index} receive`)));
      const receivesMet = g.receives.every((o) => reached(o.from, where.get(`${o.from}->${o.to} #${o.index} send`)));
      if (sendsMet && receivesMet) {
        at[s]++;
        moved = true;
      }
    });
    if (!moved) break;
  }
  return groups.flatMap((gs, s) => (at[s] < gs.length ? [`stage ${s} waits in group ${at[s]} of ${gs.length}`] : []));
}

/** The same transfers, each in a group of its own (what a naive port of the frames path would do). */
function oneByOne(plan: PipelineStep[]): PipelineStep[] {
  return plan.flatMap((step) =>
    step.kind !== 'exchange'
      ? [step]
      : [
          ...step.sends.map((t): PipelineStep => ({ kind: 'exchange', sends: [t], receives: [] })),
          ...step.receives.map((t): PipelineStep => ({ kind: 'exchange', sends: [], receives: [t] })),
        ],
  );
}

/** Every transfer a plan sends arrives where the neighbour's plan receives it, in the same order, and nothing else. */
function assertTransfersMatch(plans: PipelineStep[][], what: string): void {
  const groups = groupsOf(plans);
  const sent = groups.flat().flatMap((g) => g.sends.map((o) => `${o.from}->${o.to} #${o.index}`));
  const received = groups.flat().flatMap((g) => g.receives.map((o) => `${o.from}->${o.to} #${o.index}`));
  assert.deepEqual([...sent].sort(), [...received].sort(), `${what}: sends and receives pair up`);
  // And a link carries micro-batches in the same order on both ends.
  plans.forEach((plan, s) => {
    for (const peer of ['previous', 'next'] as const) {
      const other = s + (peer === 'next' ? 1 : -1);
      if (other < 0 || other >= plans.length) continue;
      const mine = plan.flatMap((p) => (p.kind === 'exchange' ? p.sends.filter((t) => t.peer === peer).map((t) => `${t.what} ${t.micro}`) : []));
      const theirs = plans[other].flatMap((p) =>
        p.kind === 'exchange' ? p.receives.filter((t) => t.peer === (peer === 'next' ? 'previous' : 'next')).map((t) => `${t.what} ${t.micro}`) : [],
      );
      assert.deepEqual(mine, theirs, `${what}: stage ${s} → stage ${other}`);
    }
  });
}

test('the stages’ 1F1B transfer plans run to the end under NCCL’s rules (2–6 stages, 1–8 micro-batches); sent one by one they deadlock', () => {
  let deadlocks = 0;
  for (let stages = 2; stages <= 6; stages++) {
    for (let micros = 1; micros <= 8; micros++) {
      const what = `${stages} stages, ${micros} micro-batches`;
      const plans = Array.from({ length: stages }, (_, s) => withTransfers(oneForwardOneBackward(s, stages, micros), s, stages));
      assertTransfersMatch(plans, what);
      assert.deepEqual(simulate(plans), [], `${what}: deadlocked`);
      // The computations of each stage stay in the schedule's order, every one once.
      plans.forEach((p, s) =>
        assert.deepEqual(
          p.filter((x) => x.kind !== 'exchange'),
          oneForwardOneBackward(s, stages, micros),
          `${what}: stage ${s}'s schedule`,
        ),
      );
      if (simulate(plans.map(oneByOne)).length) deadlocks++;
    }
  }
  // Whenever two neighbours reach 1F1B's steady state together (two micro-batches or more), unpaired sends deadlock.
  assert.ok(deadlocks >= 5 * 6, `the one-by-one transfers deadlocked in ${deadlocks} of 40 cases`);
  // Validation: forwards only, a chain from the first stage to the last.
  for (let stages = 2; stages <= 6; stages++) {
    const forwards = Array.from({ length: 5 }, (_, micro) => ({ kind: 'forward' as const, micro }));
    const plans = Array.from({ length: stages }, (_, s) => withTransfers(forwards, s, stages));
    assertTransfersMatch(plans, `validation, ${stages} stages`);
    assert.deepEqual(simulate(plans), [], `validation over ${stages} stages deadlocked`);
  }
});

// ---- PP 2 over fake communicators ----

const STEPS = 5;
const MICRO = 2;
const layout: ParallelLayout = { tp: 1, cp: 1, dp: 1, pp: 2 };

interface PipelineRun {
  steps: StepResult[];
  weights: Map<string, Float32Array>;
  validation: { studentCe: number; kdLoss?: number; tokens: number };
  /** Activation and gradient frames that crossed the transports. */
  frames: number;
}

/** `STEPS` steps and one validation pass under `layout` with every rank in this process, over `collectives`. */
async function pipelineRun(collectives: (t: Transport) => Collectives): Promise<PipelineRun> {
  const tr = expectedJson().train;
  const transports = localTransports(worldSize(layout));
  let frames = 0;
  for (const t of transports) {
    const send = t.send.bind(t);
    t.send = (to, m) => {
      if (m.kind === 'stageTensors') frames++;
      send(to, m);
    };
  }
  const batches = pairBatches(STEPS, MICRO);
  const ranks = transports.map((t, rank) => {
    const coll = collectives(t);
    const { student, teacher } = loadShardedPair({
      student: fixture('llama-student'),
      teacher: fixture('llama-teacher'),
      layout,
      rank,
      makeVocabSizeDivisibleBy: 1,
    });
    const optimizer = new AdamW(student.params, { beta1: tr.betas[0], beta2: tr.betas[1], eps: tr.eps, weightDecay: tr.weight_decay, weightDecayAll: true });
    const trainer = new ModelParallelTrainer({
      layout,
      rank,
      coll,
      student,
      teacher,
      loss: fixtureLoss(),
      optimizer,
      clipGrad: tr.clip_grad_norm,
      lrAt: () => tr.lr,
      nanPolicy: 'stop',
      globalBatchSize: 2,
    });
    return { rank, coll, student, teacher, optimizer, trainer };
  });
  try {
    const perRank = await Promise.all(
      ranks.map(async (r) => {
        const dp = coordsOf(layout, r.rank).dp;
        const steps: StepResult[] = [];
        for (let s = 0; s < STEPS; s++) {
          const mine: TokenBatch[] = batches.filter((b) => b.position.step === s && b.position.micro % layout.dp === dp);
          steps.push(await r.trainer.step(mine));
        }
        const validation = await r.trainer.evaluate(
          batches.filter((b) => b.position.step === 0),
          0,
        );
        const full = await gatherFullState(r.coll, layout, r.rank, r.student, r.optimizer, 'final');
        const weights = new Map<string, Float32Array>();
        if (full) for (const [name, t] of full.model.params) weights.set(name, Float32Array.from(await t.data()));
        return { steps, validation, weights };
      }),
    );
    return { steps: perRank[0].steps, weights: perRank[0].weights, validation: perRank[0].validation, frames };
  } finally {
    for (const b of batches) tf.dispose([b.inputIds, b.labels, b.lossMask]);
    for (const r of ranks) {
      r.trainer.dispose();
      r.optimizer.dispose();
      for (const v of r.student.params.values()) v.dispose();
      for (const v of r.teacher?.params.values() ?? []) v.dispose();
      if (r.coll instanceof DeviceCollectives) await r.coll.dispose();
    }
  }
}

test('PP 2 with its transfers on a communicator (the fake for NCCL): one worker’s 5 KD steps and weights, the frames path’s validation, no activation as a frame', async () => {
  const ref = await oneWorker(STEPS, MICRO);
  const viaFrames = await pipelineRun((t) => new Collectives(t));
  assert.ok(viaFrames.frames > 0, 'the frames path sends its activations as frames');

  const fakes = new Map<string, FakeCommunicatorGroup>();
  let exchanges = 0;
  const lines: string[] = [];
  const before = tf.memory().numTensors;
  const viaComm = await pipelineRun(
    (t) =>
      new DeviceCollectives(t, {
        log: (l) => lines.push(l),
        bootstrap: {
          unavailable: () => null,
          makeId: () => new Uint8Array(128),
          join: (_id, size, rank, name) => {
            if (!fakes.has(name)) fakes.set(name, new FakeCommunicatorGroup(size, 10_000));
            const member = fakes.get(name)!.members[rank];
            const exchange = member.exchange.bind(member);
            member.exchange = (sends, receives) => {
              exchanges++;
              return exchange(sends, receives);
            };
            return member;
          },
        },
      }),
  );
  assert.equal(tf.memory().numTensors, before, 'PP 2 over the communicator: tensors leaked');
  assert.equal(viaComm.frames, 0, 'an activation or gradient crossed as a frame');
  // Per step, each stage's plan has 3 groups (stage 0: send 0 | send 1 + receive 0 | receive 1; stage 1 mirrors
  // it); validation: one send and one receive per micro-batch.
  assert.equal(exchanges, STEPS * 2 * 3 + 2 * MICRO);
  assert.ok(lines.includes('collectives of group [0,1] (2 ranks): in-process fake, device to device'), lines.join('\n'));
  assertSteps(viaComm.steps, ref.steps, 1e-5, 'PP 2 over the communicator vs one worker');
  assertWeights(viaComm.weights, ref.weights, 1e-4, 'PP 2 over the communicator vs one worker');
  assert.deepEqual(viaComm.validation, viaFrames.validation, 'validation over the communicator vs over the frames');
  assert.ok(viaComm.validation.tokens > 0 && viaComm.validation.studentCe > 0, `validation ${JSON.stringify(viaComm.validation)}`);
});
