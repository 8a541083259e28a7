/**
 * The transport of a worker process on one node: frames go over the Node IPC channel to the launcher, which
 * forwards them to the addressed worker (launcher.ts). One hop more than a direct socket, but the launcher sees
 * every worker's last message, which is what the error about a dead worker reports.
 */
import { decodeMessage, encodeMessage } from './frameCodec.ts';
import { Mailbox } from './mailbox.ts';
import { describe, type MessageKind, type MessageOf, type WorkerMessage } from './messages.ts';
import type { Transport } from './transport.ts';

/** What travels on the IPC channel (structured clone): worker → launcher. */
export interface OutgoingEnvelope {
  to: number;
  /** describe(message), so the launcher can name a worker's last message without decoding relayed frames. */
  note: string;
  frame: Uint8Array;
}

/** launcher → worker. */
export interface IncomingEnvelope {
  from: number;
  frame: Uint8Array;
}

export function isIncomingEnvelope(v: unknown): v is IncomingEnvelope {
  return typeof v === 'object' && v !== null && typeof (v as IncomingEnvelope).from === 'number' && (v as IncomingEnvelope).frame instanceof Uint8Array;
}

export function isOutgoingEnvelope(v: unknown): v is OutgoingEnvelope {
  return typeof v === 'object' && v !== null && typeof (v as OutgoingEnvelope).to === 'number' && (v as OutgoingEnvelope).frame instanceof Uint8Array;
}

export class IpcTransport implements Transport {
  private readonly mailbox = new Mailbox();

  constructor(readonly rank: number) {
    if (!process.send) throw new Error('IpcTransport: this process has no IPC channel; start it with child_process.fork (src/runtime/launcher.ts)');
    process.on('message', (v: unknown) => {
      if (!isIncomingEnvelope(v)) return;
      this.mailbox.deliver(v.from, decodeMessage(v.frame));
    });
  }

  send(to: number, message: WorkerMessage): void {
    const envelope: OutgoingEnvelope = { to, note: describe(message), frame: encodeMessage(message) };
    process.send!(envelope);
  }

  receive<K extends MessageKind>(from: number, kind: K): Promise<MessageOf<K>> {
    return this.mailbox.take(from, kind);
  }

  receiveAny<K extends MessageKind>(kind: K): Promise<{ from: number; message: MessageOf<K> }> {
    return this.mailbox.takeAny(kind);
  }

  close(reason: Error): void {
    this.mailbox.fail(reason);
  }
}
