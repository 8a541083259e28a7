/**
 * The rendezvous of a run of several nodes: node 0 listens on MASTER_ADDR:MASTER_PORT (that address only) and
 * waits, up to a timeout, for every other node to connect and join; a node joins by connecting to it (retrying
 * while node 0 is not up yet). Node 0 refuses a node whose recipe, protocol or checkpoint differs from its own
 * (naming the difference), and on timeout names the node ranks that did not join, on every node. The result is
 * the star of TCP links the launchers relay worker frames over (tcpTransport.ts).
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../recipe/config.ts';
import { ConfigError } from '../errors.ts';
import { latestCheckpoint } from '../train/trainingCheckpoint.ts';
import type { NodeLaunch } from './launchEnv.ts';
import type { Placement } from '../parallel/placement.ts';
import { FrameSocket, LINK_PROTOCOL, NodeLinkError, NodeStar, type JoinMessage, type LinkMessage } from './tcpTransport.ts';
import { newNonce, NONCE_BYTES, prove, verifyProof } from './rendezvousAuth.ts';

export interface RendezvousOptions {
  launch: NodeLaunch;
  /** The recipe as JSON: every node must run the same one. */
  recipeJson: string;
  /** The step this node would resume from (its view of the run's checkpoints). */
  resumeStep: number;
  nodeOf: (worker: number) => number;
  log: (line: string) => void;
  /** Node 0: called with the port it listens on (MASTER_PORT, or the one picked for port 0 in tests). */
  onListening?: (port: number) => void;
}

/** Where each worker of a placement runs: students in blocks of --devices per node, teachers round-robin. */
export function nodeLayout(p: Placement, devicesPerNode: number, numNodes: number): { nodeOf: (id: number) => number; deviceIndex: (id: number) => number } {
  return {
    nodeOf: (id) => (id < p.studentWorkers ? Math.floor(id / devicesPerNode) : (id - p.studentWorkers) % numNodes),
    deviceIndex: (id) => (id < p.studentWorkers ? id % devicesPerNode : devicesPerNode + Math.floor((id - p.studentWorkers) / numNodes)),
  };
}

/** The rendezvous for a launcher: the recipe and checkpoint view this node brings. */
export function joinNodes(recipe: DistillationRecipe, launch: NodeLaunch, nodeOf: (id: number) => number, log: (l: string) => void): Promise<NodeStar> {
  const resumeStep = latestCheckpoint(join(recipe.logDir, recipe.name))?.step ?? 0;
  return rendezvous({ launch, recipeJson: JSON.stringify(recipe), resumeStep, nodeOf, log });
}

export function rendezvous(o: RendezvousOptions): Promise<NodeStar> {
  return o.launch.nodeRank === 0 ? host(o) : joinMaster(o);
}

const where = (l: NodeLaunch): string => `${l.masterAddr}:${l.masterPort}`;

async function host(o: RendezvousOptions): Promise<NodeStar> {
  const l = o.launch;
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const hint =
        e.code === 'EADDRINUSE'
          ? 'another process holds that port: pick a free MASTER_PORT and give it to every node'
          : e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND'
            ? "that is not an address of this machine: MASTER_ADDR must be node 0's own address"
            : 'check MASTER_ADDR and MASTER_PORT';
      reject(new ConfigError(`node 0 cannot listen on ${where(l)} for the rendezvous: ${e.message}; ${hint}`));
    });
    server.listen({ host: l.masterAddr, port: l.masterPort, exclusive: true }, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const at = `${l.masterAddr}:${port}`;
  o.onListening?.(port);
  o.log(`node 0 of ${l.numNodes}: waiting for ${l.numNodes - 1} node(s) at ${at} (up to ${l.joinTimeoutMs / 1000} s)`);
  if (!l.token)
    o.log(
      `rendezvous: no DISTILL_RENDEZVOUS_TOKEN: any host that reaches ${at} can join this run; give every node the same secret in DISTILL_RENDEZVOUS_TOKEN (or DISTILL_RENDEZVOUS_TOKEN_FILE)`,
    );
  const joined = new Map<number, { s: FrameSocket; join: JoinMessage }>();
  const pending = new Set<FrameSocket>();
  return await new Promise<NodeStar>((resolve, reject) => {
    let over = false;
    const end = (e: Error | null): void => {
      over = true;
      clearTimeout(timer);
      server.close();
      // Connections that never joined (port scanners, a stray client) are dropped either way.
      for (const s of pending) s.fail(e ?? new NodeLinkError('the rendezvous is over'));
      if (!e) return;
      for (const { s } of joined.values()) {
        s.send({ kind: 'abort', reason: e.message });
        s.close();
      }
      reject(e);
    };
    const timer = setTimeout(() => {
      const missing = Array.from({ length: l.numNodes - 1 }, (_, i) => i + 1).filter((k) => !joined.has(k));
      end(
        new NodeLinkError(
          `rendezvous at ${at}: node rank(s) ${missing.join(', ')} of ${l.numNodes} did not join within ${l.joinTimeoutMs / 1000} s ` +
            `(joined: ${[0, ...joined.keys()].sort((a, b) => a - b).join(', ')}). Start the same command on every node with the same ` +
            'MASTER_ADDR, MASTER_PORT and node count, check that each reaches this address (firewall, interface), or raise DISTILL_RENDEZVOUS_TIMEOUT_S.',
        ),
      );
    }, l.joinTimeoutMs);
    server.on('connection', (sock: Socket) => {
      if (over) return void sock.destroy();
      const s = new FrameSocket(sock, `a connection from ${sock.remoteAddress}:${sock.remotePort}`, { peerTimeoutMs: l.peerTimeoutMs });
      pending.add(s);
      s.onClose = (e) => {
        pending.delete(s);
        for (const [k, v] of joined)
          if (v.s === s && !over) {
            joined.delete(k);
            o.log(`rendezvous: node ${k} (${v.join.host}) left before every node joined${e ? `: ${e.message}` : ''}; waiting for it again`);
            return;
          }
        if (e && !over) o.log(`rendezvous: dropped ${s.peer}: ${e.message}`);
      };
      const admit = (m: LinkMessage): void => {
        if (m.kind !== 'join' || over) return s.fail(new NodeLinkError(`${s.peer} sent '${m.kind}' instead of joining`));
        const refuse = refusal(m, l, joined.has(m.nodeRank), o);
        if (refuse) {
          s.send({ kind: 'abort', reason: refuse });
          s.close();
          return end(new NodeLinkError(refuse));
        }
        pending.delete(s);
        s.peer = `node ${m.nodeRank} (${m.host}, ${sock.remoteAddress})`;
        joined.set(m.nodeRank, { s, join: m });
        o.log(`rendezvous: ${s.peer} joined (${joined.size + 1} of ${l.numNodes})`);
        if (joined.size < l.numNodes - 1) return;
        end(null);
        const hosts = [hostname(), ...[...joined.keys()].sort((a, b) => a - b).map((k) => joined.get(k)!.join.host)];
        const peers = new Map<number, FrameSocket>();
        for (const [k, v] of joined) {
          v.s.maxFrameBytes = l.maxFrameBytes;
          v.s.send({ kind: 'welcome', hosts });
          peers.set(k, v.s);
        }
        resolve(new NodeStar(0, l.numNodes, peers, o.nodeOf));
      };
      // With a token, nothing a connection sends is read (not even its recipe) until it has proven it knows it.
      s.onMessage = l.token ? authenticated(s, l.token, admit, o.log) : admit;
    });
  });
}

/**
 * Node 0's side of the token check (rendezvousAuth.ts): the join is held, node 0 proves itself and challenges,
 * and the join is admitted only with the joiner's proof. A connection that fails is refused and logged; the
 * rendezvous goes on (a stranger must not be able to end it).
 */
function authenticated(s: FrameSocket, token: string, admit: (m: LinkMessage) => void, log: (line: string) => void): (m: LinkMessage) => void {
  let held: JoinMessage | null = null;
  let ours: Uint8Array | null = null;
  let proven = false;
  const refuse = (why: string): void => {
    log(`rendezvous: refused ${s.peer}: ${why}`);
    s.send({ kind: 'abort', reason: `node 0 refused this node: ${why}` });
    s.close();
  };
  return (m) => {
    if (proven) return admit(m);
    if (m.kind === 'join' && !held) {
      if (!(m.nonce instanceof Uint8Array) || m.nonce.length !== NONCE_BYTES) {
        return refuse(
          `node ${m.nodeRank} (${m.host}) joined without the rendezvous token; node 0 requires it: give every node the same secret in DISTILL_RENDEZVOUS_TOKEN (or DISTILL_RENDEZVOUS_TOKEN_FILE)`,
        );
      }
      held = m;
      ours = newNonce();
      return s.send({ kind: 'challenge', nonce: ours, proof: prove(token, 'node0', m.nonce) });
    }
    if (m.kind === 'auth' && held && ours) {
      if (!verifyProof(token, 'joiner', ours, m.proof))
        return refuse(`node ${held.nodeRank} (${held.host}) proved another rendezvous token than node 0's: give every node the same DISTILL_RENDEZVOUS_TOKEN`);
      proven = true;
      return admit(held);
    }
    return refuse(`it sent '${m.kind}' before proving it knows the rendezvous token`);
  };
}

/** Why node 0 refuses a join, or null. Every refusal ends the rendezvous: waiting would not make it agree. */
function refusal(m: JoinMessage, l: NodeLaunch, taken: boolean, o: RendezvousOptions): string | null {
  const who = `node ${m.nodeRank} (${m.host})`;
  if (m.protocol !== LINK_PROTOCOL)
    return `${who} speaks link protocol ${m.protocol}, node 0 speaks ${LINK_PROTOCOL}: run the same distill version on every node`;
  if (m.numNodes !== l.numNodes) return `${who} was started for ${m.numNodes} nodes, node 0 for ${l.numNodes}: give every node the same --num_nodes`;
  if (m.nodeRank < 1 || m.nodeRank >= l.numNodes) return `${who}: node rank ${m.nodeRank} is outside 1..${l.numNodes - 1} (node 0 is the master)`;
  if (taken) return `two nodes claim node rank ${m.nodeRank} (the second is ${m.host}): NODE_RANK / SLURM_PROCID must differ on every node`;
  if (m.recipe !== o.recipeJson)
    return `${who} runs another recipe than node 0: ${recipeDiff(m.recipe, o.recipeJson)}. Give every node the same command line (paths must name the same files everywhere)`;
  if (m.resumeStep !== o.resumeStep) {
    return `${who} would resume from step ${m.resumeStep}, node 0 from step ${o.resumeStep}: the nodes see different checkpoints, so --log_dir must be on a filesystem every node shares`;
  }
  return null;
}

/** The first fields in which two recipes (JSON) differ, e.g. `data.dataPaths: "a" here, "b" on node 0`. */
function recipeDiff(theirs: string, ours: string): string {
  const flat = (json: string): Map<string, string> => {
    const out = new Map<string, string>();
    const walk = (v: unknown, path: string): void => {
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
      else out.set(path, JSON.stringify(v));
    };
    try {
      walk(JSON.parse(json), '');
    } catch {
      out.set('(recipe)', 'unparseable');
    }
    return out;
  };
  const [a, b] = [flat(theirs), flat(ours)];
  const keys = [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k) !== b.get(k));
  return (
    keys
      .slice(0, 4)
      .map((k) => `${k}: ${a.get(k) ?? '(absent)'} there, ${b.get(k) ?? '(absent)'} on node 0`)
      .join('; ') + (keys.length > 4 ? `; and ${keys.length - 4} more` : '')
  );
}

async function joinMaster(o: RendezvousOptions): Promise<NodeStar> {
  const l = o.launch;
  const deadline = Date.now() + l.joinTimeoutMs;
  let lastError = 'no attempt';
  for (let attempt = 0; ; attempt++) {
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new NodeLinkError(
        `node ${l.nodeRank} of ${l.numNodes} could not reach node 0 at ${where(l)} within ${l.joinTimeoutMs / 1000} s (last error: ${lastError}). ` +
          "Is node 0 running the same command, and is MASTER_ADDR node 0's address on a network this node reaches?",
      );
    }
    const sock = await tryConnect(l.masterAddr, l.masterPort, Math.min(left, 5000)).catch((e: unknown) => {
      lastError = e instanceof Error ? e.message : String(e);
      return null;
    });
    if (!sock) {
      if (attempt === 0) o.log(`node ${l.nodeRank}: waiting for node 0 at ${where(l)} (${lastError})`);
      await new Promise((r) => setTimeout(r, Math.min(500, Math.max(0, deadline - Date.now()))));
      continue;
    }
    return await handshake(sock, o, deadline);
  }
}

function tryConnect(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`connect timed out after ${(timeoutMs / 1000).toFixed(1)} s`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    });
  });
}

function handshake(sock: Socket, o: RendezvousOptions, deadline: number): Promise<NodeStar> {
  const l = o.launch;
  const s = new FrameSocket(sock, `node 0, the master (${where(l)})`, { peerTimeoutMs: l.peerTimeoutMs });
  // With a token, node 0 must prove it knows it (its challenge) before its welcome is believed.
  const nonce = l.token ? newNonce() : undefined;
  let proven = !l.token;
  return new Promise<NodeStar>((resolve, reject) => {
    // Node 0's own timeout names the missing ranks; this one (a little later) only covers a node 0 that went quiet.
    const timer = setTimeout(
      () => {
        s.fail(
          new NodeLinkError(
            `node ${l.nodeRank} joined node 0 at ${where(l)} but the run did not start within ${l.joinTimeoutMs / 1000} s: other nodes are missing`,
          ),
        );
      },
      Math.max(0, deadline - Date.now()) + 5000,
    );
    s.onClose = (e) => {
      clearTimeout(timer);
      reject(e ?? new NodeLinkError(`node 0 at ${where(l)} closed the connection during the rendezvous of node ${l.nodeRank}`));
    };
    s.onMessage = (m) => {
      if (m.kind === 'abort') {
        clearTimeout(timer);
        s.close();
        return reject(new NodeLinkError(`node 0 ended the rendezvous: ${m.reason}`));
      }
      if (m.kind === 'challenge') {
        if (!l.token)
          return s.fail(
            new NodeLinkError(
              `node 0 at ${where(l)} requires the rendezvous token and node ${l.nodeRank} has none: give every node the same secret in DISTILL_RENDEZVOUS_TOKEN (or DISTILL_RENDEZVOUS_TOKEN_FILE)`,
            ),
          );
        if (proven || !verifyProof(l.token, 'node0', nonce!, m.proof)) {
          return s.fail(
            new NodeLinkError(
              `the peer at ${where(l)} did not prove it knows this node's rendezvous token: node 0 has another DISTILL_RENDEZVOUS_TOKEN, or it is not node 0 of this run`,
            ),
          );
        }
        proven = true;
        return s.send({ kind: 'auth', proof: prove(l.token, 'joiner', m.nonce) });
      }
      if (m.kind === 'welcome' && !proven) {
        return s.fail(
          new NodeLinkError(
            `node 0 at ${where(l)} welcomed node ${l.nodeRank} without the rendezvous token this node has: give node 0 the same DISTILL_RENDEZVOUS_TOKEN (or DISTILL_RENDEZVOUS_TOKEN_FILE)`,
          ),
        );
      }
      if (m.kind !== 'welcome') return s.fail(new NodeLinkError(`node 0 sent '${m.kind}' during the rendezvous (a protocol error)`));
      clearTimeout(timer);
      s.maxFrameBytes = l.maxFrameBytes;
      o.log(`node ${l.nodeRank} of ${l.numNodes}: joined node 0 at ${where(l)} (nodes: ${m.hosts.join(', ')})`);
      resolve(new NodeStar(l.nodeRank, l.numNodes, new Map([[0, s]]), o.nodeOf));
    };
    s.send({
      kind: 'join',
      protocol: LINK_PROTOCOL,
      nodeRank: l.nodeRank,
      numNodes: l.numNodes,
      recipe: o.recipeJson,
      resumeStep: o.resumeStep,
      host: hostname(),
      ...(nonce ? { nonce } : {}),
    });
  });
}
