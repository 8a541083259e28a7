/**
 * The messages that cross the link between node launchers (tcpTransport.ts carries them): one type each, and the
 * check that a decoded frame is one of them before anything trusts it.
 */
import type { RunResult } from '../train/runResult.ts';

/** Bumped when a link message changes: nodes of different versions refuse each other at the rendezvous. */
export const LINK_PROTOCOL = 2;
/** The frame bound before a peer has joined: a join is a few hundred bytes. */
export const HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024;

// One type per message crossing the node boundary.

/** node k → node 0, first frame on a connection; `nonce` when node k has the run's token (rendezvousAuth.ts). */
export interface JoinMessage {
  kind: 'join';
  protocol: number;
  nodeRank: number;
  numNodes: number;
  recipe: string;
  resumeStep: number;
  host: string;
  nonce?: Uint8Array;
}
/** node 0 → node k, when node 0 has a token: its proof of node k's nonce, and a nonce of its own for node k to prove. */
export interface ChallengeMessage {
  kind: 'challenge';
  nonce: Uint8Array;
  proof: Uint8Array;
}
/** node k → node 0: its proof of node 0's nonce; node 0 reads the join only after it. */
export interface AuthMessage {
  kind: 'auth';
  proof: Uint8Array;
}
/** node 0 → node k: every node has joined; the run starts. */
export interface WelcomeMessage {
  kind: 'welcome';
  hosts: string[];
}
/** A worker's msgpackr frame for a worker on another node (forwarded by node 0 between two other nodes). */
export interface RelayMessage {
  kind: 'relay';
  from: number;
  to: number;
  frame: Uint8Array;
}
export interface HeartbeatMessage {
  kind: 'heartbeat';
}
/** node k → node 0: every student worker of node k is done. */
export interface NodeDoneMessage {
  kind: 'nodeDone';
}
/** node 0 → node k: every node is done; rank 0's result, so every node's `distill run` reports the same. */
export interface FinishMessage {
  kind: 'finish';
  result: RunResult | null;
}
/** Either way: the run failed; `reason` is the error the other nodes print. */
export interface AbortMessage {
  kind: 'abort';
  reason: string;
}

export type LinkMessage =
  JoinMessage | ChallengeMessage | AuthMessage | WelcomeMessage | RelayMessage | HeartbeatMessage | NodeDoneMessage | FinishMessage | AbortMessage;

const isInt = (v: unknown): v is number => Number.isInteger(v);
const isStr = (v: unknown): v is string => typeof v === 'string';

/** The decoded value as a LinkMessage, or a description of why it is not one. */
export function asLinkMessage(v: unknown): LinkMessage | string {
  if (typeof v !== 'object' || v === null) return `a ${v === null ? 'null' : typeof v}, not a message`;
  const m = v as Record<string, unknown>;
  switch (m.kind) {
    case 'join':
      return isInt(m.protocol) &&
        isInt(m.nodeRank) &&
        isInt(m.numNodes) &&
        isStr(m.recipe) &&
        isInt(m.resumeStep) &&
        isStr(m.host) &&
        (m.nonce === undefined || m.nonce instanceof Uint8Array)
        ? (m as unknown as JoinMessage)
        : 'a malformed join';
    case 'challenge':
      return m.nonce instanceof Uint8Array && m.proof instanceof Uint8Array ? (m as unknown as ChallengeMessage) : 'a malformed challenge';
    case 'auth':
      return m.proof instanceof Uint8Array ? (m as unknown as AuthMessage) : 'a malformed auth';
    case 'welcome':
      return Array.isArray(m.hosts) && m.hosts.every(isStr) ? (m as unknown as WelcomeMessage) : 'a malformed welcome';
    case 'relay':
      return isInt(m.from) && isInt(m.to) && m.frame instanceof Uint8Array ? (m as unknown as RelayMessage) : 'a malformed relay';
    case 'heartbeat':
    case 'nodeDone':
      return m as unknown as LinkMessage;
    case 'finish':
      return typeof m.result === 'object' ? (m as unknown as FinishMessage) : 'a malformed finish';
    case 'abort':
      return isStr(m.reason) ? (m as unknown as AbortMessage) : 'a malformed abort';
    default:
      return `an unknown kind ${JSON.stringify(m.kind)}`;
  }
}
