/**
 * How workers talk: typed messages to and from a numbered peer. The pipeline and the collectives see only this
 * interface, so the IPC relay used on one node can be replaced by a TCP transport across nodes without touching them.
 */
import { DistillError } from '../errors.ts';
import type { MessageKind, MessageOf, WorkerMessage } from './messages.ts';

export interface Transport {
  /** This endpoint's worker id. */
  readonly rank: number;
  /** Sends without waiting; messages from one sender to one receiver arrive in order. */
  send(to: number, message: WorkerMessage): void;
  /** The next message of this kind from that peer (in order of arrival). */
  receive<K extends MessageKind>(from: number, kind: K): Promise<MessageOf<K>>;
  /** The next message of this kind from any peer. */
  receiveAny<K extends MessageKind>(kind: K): Promise<{ from: number; message: MessageOf<K> }>;
  /** Fails every pending and later receive with `reason`. */
  close(reason: Error): void;
}

/** A receive that can never complete: the transport was closed (a peer died, the run was shut down). */
export class TransportClosedError extends DistillError {}
