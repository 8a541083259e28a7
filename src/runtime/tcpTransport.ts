/**
 * Frames between nodes over TCP, and the star of node launchers they form.
 *
 * Wire format: a 4-byte big-endian length, then one msgpackr-encoded LinkMessage (linkMessages.ts) of that many bytes. Lengths are
 * bounded (64 KiB until a peer has joined, then DISTILL_MAX_FRAME_MB), so a peer cannot make us allocate at will; a
 * frame that is too long, does not decode, or is not one of the link messages drops the peer with an error.
 *
 * Topology: a star through node 0. Only node 0 listens (on MASTER_ADDR:MASTER_PORT, the one address the user gave);
 * every other node holds one connection to it, and node 0 forwards frames between two other nodes. Why a star and
 * not a connection per node pair: no node but the master opens a port, which is what clusters firewall and what
 * torchrun and Slurm users already configure; the master sees every node, so it can name the node that dropped out
 * to all the others; and the ring all-reduce crosses nodes on only N edges of its ring, so for the few nodes a
 * run of this project spans, the extra hop through node 0 is cheap. A mesh would be the next step past that,
 * behind the same Transport interface. Within a node, workers keep the IPC channel (launcher.ts relays).
 *
 * Liveness: each side sends a heartbeat several times per peer timeout and counts a peer as gone after a timeout
 * of silence, so a cut cable (no FIN, no RST) ends the run within the timeout instead of hanging in a receive.
 */
import type { Socket } from 'node:net';
import { Packr } from 'msgpackr';
import type { RunResult } from '../train/runResult.ts';
import { DistillError } from '../errors.ts';
import { decodeMessage, encodeMessage } from './frameCodec.ts';
import { Mailbox } from './mailbox.ts';
import type { MessageKind, MessageOf, WorkerMessage } from './messages.ts';
import type { Transport } from './transport.ts';
import { asLinkMessage, HANDSHAKE_MAX_FRAME_BYTES, type LinkMessage } from './linkMessages.ts';

export { LINK_PROTOCOL, type JoinMessage, type LinkMessage } from './linkMessages.ts';

/** A peer node stopped answering, closed its connection, sent garbage, or reported a failure. */
export class NodeLinkError extends DistillError {}

const packr = new Packr({ useRecords: false, moreTypes: false });

export interface FrameSocketOptions {
  /** Silence after which the peer counts as gone; heartbeats go out at a sixth of it. */
  peerTimeoutMs: number;
}

/** One TCP connection carrying LinkMessages, with bounded frames, heartbeats and a silence watchdog. */
export class FrameSocket {
  /** Raised once the peer has joined; until then a frame over 64 KiB is garbage. */
  maxFrameBytes = HANDSHAKE_MAX_FRAME_BYTES;
  onMessage: (m: LinkMessage) => void = () => {};
  /** Called once: null when the peer ended the connection, an error when it failed, sent garbage or went silent. */
  onClose: (error: Error | null) => void = () => {};
  private chunks: Buffer[] = [];
  private buffered = 0;
  private lastHeard = Date.now();
  private done = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly socket: Socket,
    public peer: string,
    private readonly o: FrameSocketOptions,
  ) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 5000);
    socket.on('data', (b: Buffer) => this.onData(b));
    socket.on('error', (e) => this.fail(new NodeLinkError(`connection error: ${e.message}`)));
    socket.on('end', () => this.finish(null));
    socket.on('close', () => this.finish(null));
    const beat = Math.min(5000, Math.max(50, o.peerTimeoutMs / 6));
    this.timer = setInterval(() => {
      if (Date.now() - this.lastHeard > o.peerTimeoutMs) {
        this.fail(
          new NodeLinkError(
            `it sent nothing for ${(o.peerTimeoutMs / 1000).toFixed(1)} s (not even a heartbeat): the node or the network link to it is down (bound: DISTILL_NODE_TIMEOUT_S)`,
          ),
        );
      } else this.send({ kind: 'heartbeat' });
    }, beat);
    this.timer.unref();
  }

  get closed(): boolean {
    return this.done;
  }

  send(m: LinkMessage): void {
    if (this.done) return;
    const payload = packr.pack(m);
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(payload.byteLength, 0);
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(payload);
    this.socket.uncork();
  }

  /** Ends the connection in order (what was sent is flushed first); no onClose. */
  close(): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.timer);
    this.socket.end();
    // A peer that never reads its end must not keep this process alive.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Drops the peer with an error (reported through onClose). */
  fail(e: Error): void {
    if (this.done) return;
    this.socket.destroy();
    this.finish(e);
  }

  private finish(e: Error | null): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.timer);
    this.socket.destroy();
    this.onClose(e);
  }

  private onData(b: Buffer): void {
    this.lastHeard = Date.now();
    this.chunks.push(b);
    this.buffered += b.byteLength;
    while (!this.done && this.buffered >= 4) {
      if (this.chunks[0].byteLength < 4) this.chunks = [Buffer.concat(this.chunks)];
      const length = this.chunks[0].readUInt32BE(0);
      if (length > this.maxFrameBytes) {
        return this.fail(
          new NodeLinkError(
            `it sent a frame of ${length} bytes, over the ${this.maxFrameBytes}-byte limit${this.maxFrameBytes === HANDSHAKE_MAX_FRAME_BYTES ? ' before joining (not a distill node?)' : ' (raise DISTILL_MAX_FRAME_MB if a tensor really is that large)'}: dropped`,
          ),
        );
      }
      if (this.buffered < 4 + length) return;
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      const frame = all.subarray(4, 4 + length);
      const rest = all.subarray(4 + length);
      this.chunks = rest.byteLength ? [rest] : [];
      this.buffered = rest.byteLength;
      let m: LinkMessage | string;
      try {
        m = asLinkMessage(packr.unpack(frame));
      } catch (e) {
        m = `undecodable (${e instanceof Error ? e.message : String(e)})`;
      }
      if (typeof m === 'string')
        return this.fail(new NodeLinkError(`it sent a ${length}-byte frame that is ${m}: dropped (is it a distill node of the same version?)`));
      if (m.kind !== 'heartbeat') this.onMessage(m);
    }
  }
}

export interface StarHandlers {
  /** A frame for a worker on this node. */
  relay(from: number, to: number, frame: Uint8Array): void;
  /** The run failed elsewhere or the link did: end this node's workers with this error. */
  failed(e: Error): void;
  /** Every node is done; rank 0's result. */
  finished(result: RunResult | null): void;
}

/** The node launchers after the rendezvous: node 0 holds a socket per node, node k one to node 0. */
export class NodeStar {
  private handlers: StarHandlers | null = null;
  private readonly early: (() => void)[] = [];
  private readonly doneNodes = new Set<number>();
  private ownDone = false;
  private ownResult: RunResult | null = null;
  private failure: Error | null = null;
  private isFinished = false;

  constructor(
    readonly nodeRank: number,
    readonly numNodes: number,
    private readonly peers: Map<number, FrameSocket>,
    /** The node a worker id runs on. */
    readonly nodeOf: (worker: number) => number,
  ) {
    for (const [k, s] of peers) {
      s.onMessage = (m) => this.onMessage(k, m);
      s.onClose = (e) => {
        if (this.isFinished || this.failure) return;
        const what = `lost contact with ${s.peer}`;
        this.fail(
          new NodeLinkError(
            `${what}: ${e ? e.message : 'it closed the connection before the run finished'}. The run stopped on every node; the last complete checkpoint is intact, and running the same command on every node again resumes from it.`,
          ),
        );
      };
    }
  }

  get finished(): boolean {
    return this.isFinished;
  }

  /** Starts delivery; frames or failures that came earlier are handed over now. */
  attach(h: StarHandlers): void {
    this.handlers = h;
    for (const f of this.early.splice(0)) f();
  }

  /** Sends a worker's frame to a worker on another node. */
  relay(from: number, to: number, frame: Uint8Array): void {
    const node = this.nodeOf(to);
    if (node === this.nodeRank) throw new RangeError(`NodeStar.relay: worker ${to} runs on this node (${node}); deliver it locally`);
    this.peers.get(this.nodeRank === 0 ? node : 0)?.send({ kind: 'relay', from, to, frame });
  }

  /** Every student of this node is done (rank 0's result on node 0). */
  localDone(result: RunResult | null): void {
    if (this.nodeRank !== 0) return void this.peers.get(0)?.send({ kind: 'nodeDone' });
    this.ownDone = true;
    this.ownResult = result;
    this.maybeFinish();
  }

  /** This node failed: tell the others (node 0 forwards it), then the launcher ends its workers. */
  abort(e: Error): void {
    if (this.failure || this.isFinished) return;
    this.failure = e;
    for (const s of this.peers.values()) s.send({ kind: 'abort', reason: `node ${this.nodeRank}: ${e.message}` });
  }

  close(): void {
    for (const s of this.peers.values()) s.close();
  }

  private emit(f: (h: StarHandlers) => void): void {
    if (this.handlers) f(this.handlers);
    else this.early.push(() => f(this.handlers!));
  }

  private fail(e: Error): void {
    if (this.failure || this.isFinished) return;
    this.failure = e;
    // Node 0 tells every other node why, so each prints the same cause rather than "lost contact with node 0".
    if (this.nodeRank === 0) for (const s of this.peers.values()) s.send({ kind: 'abort', reason: e.message });
    this.emit((h) => h.failed(e));
  }

  private maybeFinish(): void {
    if (!this.ownDone || this.doneNodes.size < this.numNodes - 1 || this.isFinished || this.failure) return;
    this.isFinished = true;
    for (const s of this.peers.values()) s.send({ kind: 'finish', result: this.ownResult });
    this.emit((h) => h.finished(this.ownResult));
  }

  private onMessage(k: number, m: LinkMessage): void {
    switch (m.kind) {
      case 'relay': {
        const node = this.nodeOf(m.to);
        if (node === this.nodeRank) return this.emit((h) => h.relay(m.from, m.to, m.frame));
        const next = this.nodeRank === 0 ? this.peers.get(node) : undefined;
        if (next) return next.send(m);
        return this.fail(
          new NodeLinkError(
            `node ${k} sent a frame for worker ${m.to}, which runs on no node this one reaches (the nodes disagree on the placement; same --devices and --num_nodes everywhere?)`,
          ),
        );
      }
      case 'nodeDone':
        if (this.nodeRank === 0) {
          this.doneNodes.add(k);
          this.maybeFinish();
        }
        return;
      case 'finish':
        if (this.nodeRank === 0 || this.failure) return;
        this.isFinished = true;
        return this.emit((h) => h.finished(m.result));
      case 'abort':
        return this.fail(new NodeLinkError(this.nodeRank === 0 ? `node ${k} failed: ${m.reason}` : m.reason.replace(/^(?!node \d+)/, 'node 0: ')));
      default:
        return this.fail(new NodeLinkError(`node ${k} sent '${m.kind}' after the rendezvous (a protocol error)`));
    }
  }
}

/**
 * The Transport of a process that is a node by itself (one worker per node): the same ring all-reduce and stage
 * code run over TCP unchanged. The launcher relays raw frames through NodeStar instead, without decoding them.
 */
export class TcpTransport implements Transport {
  private readonly mailbox = new Mailbox();

  constructor(private readonly star: NodeStar) {
    star.attach({
      relay: (from, _to, frame) => {
        try {
          this.mailbox.deliver(from, decodeMessage(frame));
        } catch (e) {
          this.mailbox.fail(new NodeLinkError(`worker ${from} sent an undecodable message: ${e instanceof Error ? e.message : String(e)}`));
        }
      },
      failed: (e) => this.mailbox.fail(e),
      finished: () => {},
    });
  }

  get rank(): number {
    return this.star.nodeRank;
  }

  send(to: number, message: WorkerMessage): void {
    this.star.relay(this.rank, to, encodeMessage(message));
  }

  receive<K extends MessageKind>(from: number, kind: K): Promise<MessageOf<K>> {
    return this.mailbox.take(from, kind);
  }

  receiveAny<K extends MessageKind>(kind: K): Promise<{ from: number; message: MessageOf<K> }> {
    return this.mailbox.takeAny(kind);
  }

  close(reason: Error): void {
    this.mailbox.fail(reason);
    this.star.close();
  }
}
