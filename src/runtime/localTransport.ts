/**
 * In-process transports, fully connected: for tests of the collectives and for benchmarks of them without
 * processes. Every message is still encoded to a msgpackr frame and decoded on delivery, as between processes.
 */
import { decodeMessage, encodeMessage } from './frameCodec.ts';
import { Mailbox } from './mailbox.ts';
import type { MessageKind, MessageOf, WorkerMessage } from './messages.ts';
import type { Transport } from './transport.ts';

export function localTransports(n: number): Transport[] {
  const boxes = Array.from({ length: n }, () => new Mailbox());
  return boxes.map((box, rank) => ({
    rank,
    send(to: number, message: WorkerMessage): void {
      const target = boxes[to];
      if (!target) throw new RangeError(`local transport: no worker ${to} (there are ${n})`);
      const frame = encodeMessage(message);
      // Asynchronous delivery, as over a channel: a sender never runs the receiver's continuation inline.
      setImmediate(() => target.deliver(rank, decodeMessage(frame)));
    },
    receive<K extends MessageKind>(from: number, kind: K): Promise<MessageOf<K>> {
      return box.take(from, kind);
    },
    receiveAny<K extends MessageKind>(kind: K): Promise<{ from: number; message: MessageOf<K> }> {
      return box.takeAny(kind);
    },
    close(reason: Error): void {
      box.fail(reason);
    },
  }));
}
