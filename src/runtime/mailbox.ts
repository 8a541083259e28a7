/**
 * Messages that arrived before anyone asked for them, and receivers waiting for messages not yet arrived, keyed by
 * sender and kind. Both sides are FIFO, so per-(sender, kind) order is the order of sending.
 */
import type { MessageKind, MessageOf, WorkerMessage } from './messages.ts';

interface Waiter {
  resolve: (v: { from: number; message: WorkerMessage }) => void;
  reject: (e: Error) => void;
}

const ANY = '*';

export class Mailbox {
  private readonly queues = new Map<string, { from: number; message: WorkerMessage }[]>();
  private readonly waiters = new Map<string, Waiter[]>();
  private failure: Error | null = null;

  deliver(from: number, message: WorkerMessage): void {
    const direct = this.waiters.get(key(from, message.kind))?.shift() ?? this.waiters.get(key(ANY, message.kind))?.shift();
    if (direct) return direct.resolve({ from, message });
    const k = key(from, message.kind);
    const q = this.queues.get(k);
    if (q) q.push({ from, message });
    else this.queues.set(k, [{ from, message }]);
  }

  async take<K extends MessageKind>(from: number, kind: K): Promise<MessageOf<K>> {
    const got = await this.wait(key(from, kind), () => this.queues.get(key(from, kind))?.shift());
    // The key holds only messages whose kind is K.
    return got.message as MessageOf<K>;
  }

  async takeAny<K extends MessageKind>(kind: K): Promise<{ from: number; message: MessageOf<K> }> {
    const got = await this.wait(key(ANY, kind), () => {
      for (const [k, q] of this.queues) if (k.endsWith(`:${kind}`) && q.length) return q.shift();
      return undefined;
    });
    return { from: got.from, message: got.message as MessageOf<K> };
  }

  fail(reason: Error): void {
    this.failure ??= reason;
    for (const ws of this.waiters.values()) for (const w of ws.splice(0)) w.reject(reason);
  }

  private wait(k: string, queued: () => { from: number; message: WorkerMessage } | undefined): Promise<{ from: number; message: WorkerMessage }> {
    const ready = queued();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const ws = this.waiters.get(k);
      if (ws) ws.push({ resolve, reject });
      else this.waiters.set(k, [{ resolve, reject }]);
    });
  }
}

function key(from: number | typeof ANY, kind: MessageKind): string {
  return `${from}:${kind}`;
}
