/**
 * Where this node stands in a run of several nodes, read from the environment the engine that started it set:
 * torchrun's convention (MASTER_ADDR, MASTER_PORT, NODE_RANK, NNODES, NPROC_PER_NODE), which Kubernetes Jobs and
 * most launchers also use, or Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST). One
 * `distill run` per node: it forks --devices workers on its node itself, so Slurm must start one task per node.
 */
import { isIP } from 'node:net';
import { ConfigError } from '../errors.ts';
import { rendezvousToken } from './rendezvousAuth.ts';

export interface NodeLaunch {
  nodeRank: number;
  numNodes: number;
  /** Node 0's address: node 0 listens on it (and only on it), the others connect to it. */
  masterAddr: string;
  masterPort: number;
  /** Which convention the values came from, for error messages. */
  source: 'torchrun' | 'slurm';
  /** How long node 0 waits for every node to join, and a node for node 0 (DISTILL_RENDEZVOUS_TIMEOUT_S, default 300). */
  joinTimeoutMs: number;
  /** Silence after which a peer node counts as gone (DISTILL_NODE_TIMEOUT_S, default 30); heartbeats keep a live link busy. */
  peerTimeoutMs: number;
  /** Largest frame accepted from a peer node (DISTILL_MAX_FRAME_MB, default 512). */
  maxFrameBytes: number;
  /** The run's shared secret (DISTILL_RENDEZVOUS_TOKEN or DISTILL_RENDEZVOUS_TOKEN_FILE; rendezvousAuth.ts); absent: joins are not authenticated. */
  token?: string | null;
}

type Env = Record<string, string | undefined>;

/**
 * Expands Slurm's compressed host list: "node[01-03,07],gpu5" → node01 node02 node03 node07 gpu5. Zero padding
 * follows the range's first number; several bracket groups in one name expand as a product ("r[1-2]n[1-2]").
 */
export function expandNodelist(list: string): string[] {
  const out: string[] = [];
  for (const item of splitTopLevel(list.trim())) if (item) out.push(...expandItem(item, list));
  if (!out.length) throw new ConfigError(`SLURM_JOB_NODELIST "${list}" names no host`);
  return out;
}

function splitTopLevel(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '[') depth++;
    else if (s[i] === ']') depth--;
    else if (s[i] === ',' && depth === 0) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(s.slice(start));
  return parts.map((p) => p.trim());
}

function expandItem(item: string, whole: string): string[] {
  const open = item.indexOf('[');
  if (open < 0) return [item];
  const close = item.indexOf(']', open);
  if (close < 0) throw new ConfigError(`SLURM_JOB_NODELIST "${whole}": unclosed "[" in "${item}"`);
  const prefix = item.slice(0, open);
  const tails = expandItem(item.slice(close + 1), whole);
  const out: string[] = [];
  for (const r of item.slice(open + 1, close).split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(r.trim());
    if (!m) throw new ConfigError(`SLURM_JOB_NODELIST "${whole}": "${r}" is not a number or a range a-b`);
    const [a, b] = [Number(m[1]), Number(m[2] ?? m[1])];
    if (b < a) throw new ConfigError(`SLURM_JOB_NODELIST "${whole}": range ${r} runs backwards`);
    for (let n = a; n <= b; n++) for (const t of tails) out.push(prefix + String(n).padStart(m[1].length, '0') + t);
  }
  return out;
}

function intVar(env: Env, name: string, min: number): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`${name}=${v} is not an integer ≥ ${min}`);
  return n;
}

function positive(env: Env, name: string, dflt: number): number {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new ConfigError(`${name}=${v}: give a positive number`);
  return n;
}

/**
 * Refuses a one-node run started as one of several nodes (torchrun vars, or srun with several tasks): each copy
 * would train alone and all would write the same run directory.
 */
export function checkOneNode(numNodes: number, env: Env = process.env): void {
  const n = multiNodeEnv(env);
  if (numNodes === 1 && n > 1) {
    throw new ConfigError(
      `this process is one of ${n} nodes (${env.NODE_RANK !== undefined ? 'NNODES' : 'SLURM_NTASKS'}=${n}) but --num_nodes is 1: pass --num_nodes ${n} (and --devices per node), or start a single task`,
    );
  }
}

/** How many nodes the environment says this process is one of (1 outside torchrun's convention and srun). */
export function multiNodeEnv(env: Env = process.env): number {
  if (env.NODE_RANK !== undefined) return intVar(env, 'NNODES', 1) ?? 1;
  // Under srun with one task per node; a plain `distill run` in an salloc shell has no SLURM_PROCID.
  if (env.SLURM_PROCID !== undefined && env.SLURM_STEP_ID !== undefined) return intVar(env, 'SLURM_NTASKS', 1) ?? 1;
  return 1;
}

/**
 * This node's rank and the master's address for a run of `numNodes` nodes of `devicesPerNode` workers. Throws a
 * ConfigError saying what to set when the environment is missing, inconsistent with the flags, or unsafe.
 */
export function nodeLaunchFromEnv(want: { numNodes: number; devicesPerNode: number }, env: Env = process.env): NodeLaunch {
  const limits = {
    joinTimeoutMs: positive(env, 'DISTILL_RENDEZVOUS_TIMEOUT_S', 300) * 1000,
    peerTimeoutMs: positive(env, 'DISTILL_NODE_TIMEOUT_S', 30) * 1000,
    maxFrameBytes: Math.round(positive(env, 'DISTILL_MAX_FRAME_MB', 512) * 2 ** 20),
    token: rendezvousToken(env),
  };
  let l: NodeLaunch;
  if (env.NODE_RANK !== undefined) {
    const missing = ['MASTER_ADDR', 'MASTER_PORT', 'NNODES'].filter((k) => !env[k]);
    if (missing.length)
      throw new ConfigError(
        `NODE_RANK is set (torchrun's convention) but ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not: set MASTER_ADDR, MASTER_PORT, NODE_RANK and NNODES on every node`,
      );
    l = {
      nodeRank: intVar(env, 'NODE_RANK', 0)!,
      numNodes: intVar(env, 'NNODES', 1)!,
      masterAddr: env.MASTER_ADDR!,
      masterPort: intVar(env, 'MASTER_PORT', 0)!,
      source: 'torchrun',
      ...limits,
    };
    const nproc = intVar(env, 'NPROC_PER_NODE', 1);
    if (nproc !== undefined && nproc !== want.devicesPerNode) {
      throw new ConfigError(`NPROC_PER_NODE=${nproc} but --devices ${want.devicesPerNode}: give the same number of workers per node to both`);
    }
  } else if (env.SLURM_PROCID !== undefined) {
    const tasks = intVar(env, 'SLURM_NTASKS', 1) ?? 1;
    const local = intVar(env, 'SLURM_LOCALID', 0) ?? 0;
    if (tasks !== want.numNodes || local !== 0) {
      throw new ConfigError(
        `Slurm started ${tasks} task(s) (this is local task ${local} on its node) for --num_nodes ${want.numNodes}: start one task per node (srun --ntasks-per-node=1 --nodes ${want.numNodes}); each distill forks its --devices workers itself. \`distill slurm\` writes such a script`,
      );
    }
    const list = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
    if (!env.MASTER_ADDR && !list) throw new ConfigError("under Slurm without SLURM_JOB_NODELIST: set MASTER_ADDR to node 0's address");
    const jobId = intVar(env, 'SLURM_JOB_ID', 0) ?? 0;
    l = {
      nodeRank: intVar(env, 'SLURM_PROCID', 0)!,
      numNodes: tasks,
      masterAddr: env.MASTER_ADDR || expandNodelist(list!)[0],
      // Every task of the job computes the same port without talking; MASTER_PORT overrides it.
      masterPort: intVar(env, 'MASTER_PORT', 0) ?? 20000 + (jobId % 20000),
      source: 'slurm',
      ...limits,
    };
  } else {
    throw new ConfigError(
      `--num_nodes ${want.numNodes}: this node does not know its rank or the master's address. Set MASTER_ADDR (node 0's address), MASTER_PORT, NODE_RANK and NNODES on every node (torchrun's convention), or start distill under srun (\`distill slurm\` writes the sbatch script)`,
    );
  }
  if (l.numNodes !== want.numNodes)
    throw new ConfigError(
      `${l.source === 'slurm' ? 'SLURM_NTASKS' : 'NNODES'}=${l.numNodes} but --num_nodes ${want.numNodes}: give the same node count to both`,
    );
  if (l.nodeRank >= l.numNodes) throw new ConfigError(`node rank ${l.nodeRank} is not below the node count ${l.numNodes}`);
  if (l.masterPort < 1 || l.masterPort > 65535) throw new ConfigError(`MASTER_PORT=${l.masterPort} is not a TCP port (1..65535)`);
  // Node 0 listens on exactly this address: a wildcard would expose the port on every interface, and other nodes
  // could not connect to it anyway.
  if (isIP(l.masterAddr) && /^(0\.0\.0\.0|::|0:0:0:0:0:0:0:0)$/.test(l.masterAddr)) {
    throw new ConfigError(`MASTER_ADDR=${l.masterAddr} is a wildcard: give node 0's own address on the network the nodes share (node 0 listens only there)`);
  }
  return l;
}
