/**
 * How a group of the layout gets its communicator: rank 0 of the group decides for all (NCCL when the backend is
 * cuda and libnccl.so.2 loads, the ring otherwise), makes the ncclUniqueId and hands it to the others over the
 * transport we already have (the launcher's IPC relay on one node, the rendezvous' TCP links between nodes), so
 * torchrun's and Slurm's environment work unchanged; then every rank joins with it. NCCL's own transports
 * (NVLink, shared memory, sockets, InfiniBand) carry the data from then on; our transport stays the control plane.
 *
 * Made once per group and kept for the run. On CPU backends nothing is exchanged: every rank runs the same
 * recipe, so every rank decides "ring" on its own.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Transport } from '../../runtime/transport.ts';
import type { MessageOf } from '../../runtime/messages.ts';
import { CollectiveError, type Communicator } from './communicator.ts';
import { loadNccl, ncclUniqueId } from './ncclLibrary.ts';
import { NcclCommunicator } from './ncclCommunicator.ts';
import { answerProbes, diagnoseHang } from './liveness.ts';

export type GroupCollectives = { kind: 'nccl'; comm: Communicator } | { kind: 'ring'; reason: string };

export interface BootstrapOptions {
  /** Why this process cannot run NCCL, or null when it can; by default: not on cuda, DISTILL_COLLECTIVES=ring, or libnccl.so.2 does not load. */
  unavailable?: () => string | null;
  /** A fresh unique id (rank 0 only). */
  makeId?: () => Uint8Array;
  /** Joins the group with the id (blocks until every rank has joined). */
  join?: (id: Uint8Array, size: number, rank: number, name: string) => Communicator | Promise<Communicator>;
  /** How long a rank whose collective is stuck waits for the others' answers (liveness.ts); 5 s by default. */
  probeWaitMs?: number;
}

/**
 * Ids that arrived for another group than the one awaited, per transport and sender: a worker may lead two groups
 * this rank is in (its TP group and the world), and the two ranks need not meet them in the same order.
 */
const early = new WeakMap<Transport, Map<string, MessageOf<'ncclId'>>>();

async function receiveId(transport: Transport, from: number, name: string): Promise<MessageOf<'ncclId'>> {
  let stash = early.get(transport);
  if (!stash) early.set(transport, (stash = new Map()));
  const key = (group: string): string => `${from}/${group}`;
  for (;;) {
    const have = stash.get(key(name));
    if (have) {
      stash.delete(key(name));
      return have;
    }
    const m = await transport.receive(from, 'ncclId');
    if (m.group === name) return m;
    stash.set(key(m.group), m);
  }
}

/** Why NCCL cannot carry this process' collectives, or null when it can. */
export function ncclUnavailable(env: Record<string, string | undefined> = process.env): string | null {
  if (tf.getBackend() !== 'cuda') return `the ${tf.getBackend()} backend keeps its tensors off CUDA devices`;
  if (env.DISTILL_COLLECTIVES === 'ring') return 'DISTILL_COLLECTIVES=ring asks for the ring';
  try {
    loadNccl();
  } catch (e) {
    return (e as Error).message;
  }
  return null;
}

/**
 * The collectives of `group` (worker ids in rank order; this worker is in it), named `name` in errors and logs
 * ("dp", "tp 0", ...). Every member must call this at the same point of its run.
 */
export async function groupCollectives(transport: Transport, group: readonly number[], name: string, o: BootstrapOptions = {}): Promise<GroupCollectives> {
  const rank = group.indexOf(transport.rank);
  if (rank < 0) throw new CollectiveError(`group ${name}: worker ${transport.rank} is not one of its workers [${group.join(', ')}]`);
  const unavailable = o.unavailable ?? (() => ncclUnavailable());
  const join = o.join ?? ((id, size, r, n) => NcclCommunicator.join(id, size, r, n));
  if (!o.unavailable && tf.getBackend() !== 'cuda') return { kind: 'ring', reason: unavailable() ?? 'not on cuda' };
  let id: Uint8Array;
  if (rank === 0) {
    const reason = unavailable();
    const made = reason === null ? (o.makeId ?? (() => ncclUniqueId()))() : null;
    for (const w of group.slice(1)) transport.send(w, { kind: 'ncclId', group: name, id: made, reason });
    if (!made) return { kind: 'ring', reason: reason! };
    id = made;
  } else {
    const m = await receiveId(transport, group[0], name);
    if (!m.id) return { kind: 'ring', reason: `rank 0 of the group cannot run NCCL: ${m.reason}` };
    const mine = unavailable();
    if (mine !== null)
      throw new CollectiveError(
        `group ${name}: rank 0 runs the collectives on NCCL but rank ${rank} (worker ${transport.rank}) cannot: ${mine}. Install the same NCCL on every node, or set DISTILL_COLLECTIVES=ring on all of them`,
        [rank],
      );
    id = Uint8Array.from(m.id);
  }
  const comm = await join(id, group.length, rank, name);
  // A rank whose collective does not finish asks the others how far they got; every rank answers for its groups.
  answerProbes(transport, name, () => comm.issued);
  comm.diagnoseHang ??= (issued) => diagnoseHang(transport, group, name, issued, o.probeWaitMs);
  return { kind: 'nccl', comm };
}

/** The log line that says which transport a group's collectives use, and why. */
export function collectivesLine(name: string, size: number, c: GroupCollectives): string {
  if (c.kind === 'nccl') return `collectives of group ${name} (${size} rank${size > 1 ? 's' : ''}): ${c.comm.describe}, device to device`;
  return `collectives of group ${name} (${size} ranks): the ring all-reduce over the launcher's frames, because ${c.reason}`;
}
