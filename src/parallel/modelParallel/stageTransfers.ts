/**
 * The point-to-point transfers between pipeline stages around one stage's schedule: the activations sent on to the
 * next stage after each forward and the gradients sent back to the previous one after each backward, exchanged
 * where the stage's plan (pipelineSchedule.ts, withTransfers) places them. It lives apart from the trainer because
 * it is the one part of a step that talks to other stages: the trainer says what each forward and backward
 * computes, this file moves what they hand on and frees it once sent.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { TokenBatch } from '../../train/batch.ts';
import { groupOf, rankOf, type ParallelLayout, type RankCoords } from '../layout.ts';
import type { Collectives } from './collectives.ts';
import { withTransfers, type ScheduleAction, type StageTransfer } from './pipelineSchedule.ts';
import type { ShardedStage } from './shardedTransformer.ts';

/** Where this stage sits and what it runs: enough to find its peers and the shapes of what they send it. */
export interface StageTransferContext {
  layout: ParallelLayout;
  rank: number;
  coords: RankCoords;
  coll: Collectives;
  studentStage: ShardedStage;
  /** null when pretraining. */
  teacherStage: ShardedStage | null;
}

/** The shapes a transfer into this stage carries: the residual streams (student's, then teacher's) or the student's gradient. */
function incomingShapes(ctx: StageTransferContext, t: StageTransfer, mb: TokenBatch): number[][] {
  const [batch, seq] = mb.inputIds.shape;
  const student = ctx.studentStage.residualShape(batch, seq);
  if (t.what === 'gradient' || !ctx.teacherStage) return [student];
  return [student, ctx.teacherStage.residualShape(batch, seq)];
}

/**
 * Runs `actions` (this stage's schedule) with the transfers between stages in place (withTransfers): `run` gets
 * an action and what arrived for it (taken over), and returns what it sends on (taken over, freed once sent).
 */
export async function runWithStageTransfers(
  ctx: StageTransferContext,
  actions: readonly ScheduleAction[],
  label: string,
  micros: readonly TokenBatch[],
  run: (a: ScheduleAction, received: tf.Tensor[] | undefined) => Promise<tf.Tensor[] | null>,
): Promise<void> {
  const { layout, coll } = ctx;
  const group = groupOf(layout, ctx.rank, ['pp']);
  const key = (what: StageTransfer['what'], micro: number): string => `${what} ${micro}`;
  const peer = (t: StageTransfer): number => rankOf(layout, { ...ctx.coords, pp: ctx.coords.pp + (t.peer === 'next' ? 1 : -1) });
  const tag = (t: StageTransfer): string => `${label} micro ${t.micro} ${t.what}`;
  const arrived = new Map<string, tf.Tensor[]>();
  const outgoing = new Map<string, tf.Tensor[]>();
  try {
    for (const step of withTransfers(actions, ctx.coords.pp, layout.pp)) {
      if (step.kind === 'exchange') {
        const sends = step.sends.map((t) => ({ to: peer(t), tag: tag(t), tensors: outgoing.get(key(t.what, t.micro))! }));
        const receives = step.receives.map((t) => ({ from: peer(t), tag: tag(t), shapes: incomingShapes(ctx, t, micros[t.micro]) }));
        const got = await coll.stageExchange(group, sends, receives);
        for (const t of step.sends) {
          tf.dispose(outgoing.get(key(t.what, t.micro))!);
          outgoing.delete(key(t.what, t.micro));
        }
        step.receives.forEach((t, i) => arrived.set(key(t.what, t.micro), got[i]));
        continue;
      }
      const inKey = key(step.kind === 'forward' ? 'activation' : 'gradient', step.micro);
      const received = arrived.get(inKey);
      arrived.delete(inKey);
      const out = await run(step, received);
      if (out) outgoing.set(key(step.kind === 'forward' ? 'activation' : 'gradient', step.micro), out);
    }
  } finally {
    // Left over only when a step failed.
    for (const ts of [...arrived.values(), ...outgoing.values()]) tf.dispose(ts);
  }
}
