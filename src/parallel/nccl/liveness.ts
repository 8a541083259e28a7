/**
 * Naming the rank behind a collective that does not finish. NCCL only tells a waiting rank that its collective is
 * still running; our transport can ask the others. Every rank answers probes about its groups with how many
 * collectives it has issued in each (from the event loop, which keeps turning while a rank waits for NCCL:
 * synchronize polls). A rank that does not answer is hung (stopped, or stuck in a native call); one that answers
 * with fewer collectives has not reached this one; when every rank answers with as many, NCCL's own transport is
 * what is stuck. A rank that died is not asked: the launcher ends the run naming it as soon as its process exits.
 */
import type { Transport } from '../../runtime/transport.ts';
import type { MessageOf } from '../../runtime/messages.ts';

/** What a rank found out about a stuck collective: a sentence, and the group ranks it names. */
export interface HangReport {
  text: string;
  ranks: number[];
}

const answering = new WeakMap<Transport, Map<string, () => number>>();

/** Makes this worker answer probes about `group` with `issued()`; one answering loop per transport. */
export function answerProbes(transport: Transport, group: string, issued: () => number): void {
  let groups = answering.get(transport);
  if (!groups) {
    const mine = new Map<string, () => number>();
    answering.set(transport, (groups = mine));
    void (async () => {
      for (;;) {
        let probe: { from: number; message: MessageOf<'collectiveProbe'> };
        try {
          probe = await transport.receiveAny('collectiveProbe');
        } catch {
          return; // the transport closed: the run is over
        }
        const asked = probe.message.group;
        const count = mine.get(asked);
        try {
          transport.send(probe.from, { kind: 'collectiveProbeReply', group: asked, issued: count ? count() : -1 });
        } catch {
          return;
        }
      }
    })();
  }
  groups.set(group, issued);
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

/**
 * Asks the other members of `group` (worker ids in rank order) how far they got, waiting `waitMs` for answers,
 * and says who is at fault compared with this rank's `issued` collectives.
 */
export async function diagnoseHang(transport: Transport, members: readonly number[], group: string, issued: number, waitMs = 5000): Promise<HangReport> {
  const others = members.map((worker, rank) => ({ worker, rank })).filter((m) => m.worker !== transport.rank);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), waitMs);
  });
  const answers = await Promise.all(
    others.map(async ({ worker }) => {
      try {
        transport.send(worker, { kind: 'collectiveProbe', group });
      } catch {
        return null;
      }
      const reply = (async (): Promise<number> => {
        for (;;) {
          const m = await transport.receive(worker, 'collectiveProbeReply');
          if (m.group === group) return m.issued;
        }
      })();
      return Promise.race([reply.catch(() => null), deadline]);
    }),
  );
  clearTimeout(timer);
  const silent: string[] = [];
  const behind: string[] = [];
  const ranks: number[] = [];
  others.forEach(({ worker, rank }, i) => {
    const a = answers[i];
    if (a === null) {
      silent.push(`rank ${rank} (worker ${worker}) did not answer within ${seconds(waitMs)}: it is hung (stopped, or stuck in a native call)`);
      ranks.push(rank);
    } else if (a < issued) {
      behind.push(`rank ${rank} (worker ${worker}) has issued ${a} collectives of the group, this rank ${issued}: it has not reached this one`);
      ranks.push(rank);
    }
  });
  if (!ranks.length)
    return {
      text: `every rank answered and has issued ${issued} collectives of the group: NCCL's own transport is stuck (NCCL_DEBUG=INFO says on which link)`,
      ranks,
    };
  return { text: [...silent, ...behind].join('; '), ranks };
}
