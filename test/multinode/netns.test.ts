/**
 * Two "nodes" on this machine, each in a network namespace of its own joined by a veth pair (10.231.0.1/30 and
 * 10.231.0.2/30, a link that exists only between those namespaces), each running `distill run --num_nodes 2`
 * with torchrun's variables: DP 2 across them gives the weights of one worker (≤1e-5); cutting the link mid-run
 * ends both nodes with the clear error within the bound, and rerunning the same command resumes and finishes.
 * Needs root (ip netns); without it, says so and falls back to two processes on loopback (127.0.0.1 / 127.0.0.2),
 * where a SIGSTOP of node 1 stands in for the cut.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../pipelines/run.ts';
import { recipeFromFlags } from '../../src/cli/runFlags.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { latestCheckpoint } from '../../src/train/trainingCheckpoint.ts';
import { fixture, maxAbsDiff, ROOT } from '../helpers/fixtures.ts';

const PEER_TIMEOUT_S = 3;
const tag = String(process.pid % 100000);
const NS = [`dst0-${tag}`, `dst1-${tag}`];
const VETH = [`dv0-${tag}`, `dv1-${tag}`];
const ADDR = ['10.231.0.1', '10.231.0.2'];
const dir = mkdtempSync(join(tmpdir(), 'distill-netns-'));

const sh = (...args: string[]): string => execFileSync(args[0], args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** The two namespaces and the veth between them, or why they could not be made. */
function makeNamespaces(): string | null {
  try {
    sh('ip', 'netns', 'add', NS[0]);
    sh('ip', 'netns', 'add', NS[1]);
    sh('ip', 'link', 'add', VETH[0], 'netns', NS[0], 'type', 'veth', 'peer', 'name', VETH[1], 'netns', NS[1]);
    for (const i of [0, 1]) {
      sh('ip', '-n', NS[i], 'addr', 'add', `${ADDR[i]}/30`, 'dev', VETH[i]);
      sh('ip', '-n', NS[i], 'link', 'set', VETH[i], 'up');
      sh('ip', '-n', NS[i], 'link', 'set', 'lo', 'up');
    }
    return null;
  } catch (e) {
    removeNamespaces();
    return e instanceof Error ? e.message.split('\n').slice(0, 2).join(' ') : String(e);
  }
}

function removeNamespaces(): void {
  for (const ns of NS) {
    try {
      sh('ip', 'netns', 'del', ns); // deletes the veth end inside it, and with it the pair
    } catch {
      // not created
    }
  }
}

const netnsError = makeNamespaces();
const netns = netnsError === null;
if (!netns) {
  ADDR.splice(0, 2, '127.0.0.1', '127.0.0.2');
  console.log(
    `# network namespaces unavailable here (${netnsError}); falling back to two processes on loopback ${ADDR.join(' / ')}, a SIGSTOP of node 1 standing in for the cut link`,
  );
}
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
  removeNamespaces();
  rmSync(dir, { recursive: true, force: true });
});

function runArgs(name: string, maxSteps: number, saveInterval: number): string[] {
  return [
    'run',
    '--name',
    name,
    '--log_dir',
    dir,
    '--student_path',
    fixture('llama-student'),
    '--teacher_path',
    fixture('llama-teacher'),
    '--data_paths',
    fixture('megatron', 'small_text_document'),
    '--seq_length',
    '16',
    '--split',
    '80,20,0',
    '--seed',
    '7',
    '--max_steps',
    String(maxSteps),
    '--gbs',
    '2',
    '--mbs',
    '1',
    '--save_interval',
    String(saveInterval),
    '--val_check_interval',
    '3',
    '--limit_val_batches',
    '2',
    '--log_interval',
    '1',
    '--lr',
    '1e-3',
    '--min_lr',
    '1e-4',
    '--warmup_steps',
    '1',
    '--backend',
    'cpu',
  ];
}

interface NodeRun {
  child: ChildProcess;
  done: Promise<{ code: number | null; stdout: string; stderr: string; endedAt: number }>;
}

/** `distill run --num_nodes 2 --devices 1` as node `rank`, inside its namespace. */
function startNode(rank: number, args: string[], port: number): NodeRun {
  const cmd = [process.execPath, '--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args, '--num_nodes', '2', '--devices', '1'];
  const argv = netns ? ['ip', 'netns', 'exec', NS[rank], ...cmd] : cmd;
  const child = spawn(argv[0], argv.slice(1), {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      MASTER_ADDR: ADDR[0],
      MASTER_PORT: String(port),
      NODE_RANK: String(rank),
      NNODES: '2',
      NPROC_PER_NODE: '1',
      DISTILL_NODE_TIMEOUT_S: String(PEER_TIMEOUT_S),
      DISTILL_RENDEZVOUS_TIMEOUT_S: '60',
    },
  });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => {
    stdout += b.toString();
  });
  child.stderr!.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string; endedAt: number }>((resolve) => {
    child.on('exit', (code) => resolve({ code, stdout, stderr, endedAt: Date.now() }));
  });
  return { child, done };
}

const randomPort = (): number => 20000 + Math.floor(Math.random() * 30000);
const weights = (d: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(d, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

test(`DP 2 across two nodes (${netns ? 'network namespaces over a veth pair' : 'loopback fallback'}) gives the weights of one worker`, async () => {
  const port = randomPort();
  const nodes = [0, 1].map((r) => startNode(r, runArgs('dp2', 6, 2), port));
  const single = await run(
    recipeFromFlags('distill', runArgs('single', 6, 2), () => ''),
    { log: null },
  );
  const [n0, n1] = await Promise.all(nodes.map((n) => n.done));
  assert.equal(n0.code, 0, `node 0 failed:\n${n0.stderr}`);
  assert.equal(n1.code, 0, `node 1 failed:\n${n1.stderr}`);
  assert.match(n0.stderr, new RegExp(`waiting for 1 node\\(s\\) at ${ADDR[0].replace(/\./g, '\\.')}:${port}`));
  assert.match(n1.stderr, /node 1 of 2: joined node 0/);
  // Every node reports rank 0's result.
  const [r0, r1] = [JSON.parse(n0.stdout) as { steps: number; loss: number }, JSON.parse(n1.stdout) as { steps: number; loss: number }];
  assert.deepEqual(r1, r0);
  assert.equal(r0.steps, 6);
  assert.ok(Math.abs(r0.loss - single.steps[5].loss) <= 1e-5, `last loss ${r0.loss} vs one worker ${single.steps[5].loss}`);
  const want = weights(single.studentDir);
  const got = weights(join(dir, 'dp2', 'student'));
  for (const [name, w] of want) assert.ok(maxAbsDiff(w, got.get(name)!) <= 1e-5, `${name} differs by ${maxAbsDiff(w, got.get(name)!)}`);
});

test('cutting the link mid-run ends both nodes with the clear error within the bound; rerunning resumes', async () => {
  const args = runArgs('cut', 16, 1);
  const runDir = join(dir, 'cut');
  const port = randomPort();
  const nodes = [0, 1].map((r) => startNode(r, args, port));
  const deadline = Date.now() + 60_000;
  while ((latestCheckpoint(runDir)?.step ?? 0) < 2) {
    assert.ok(Date.now() < deadline, 'no checkpoint of step 2 within 60 s');
    assert.equal(nodes[0].child.exitCode, null, 'node 0 ended before the cut');
    await new Promise((r) => setTimeout(r, 100));
  }
  const cutAt = Date.now();
  if (netns) sh('ip', '-n', NS[0], 'link', 'set', VETH[0], 'down');
  else process.kill(nodes[1].child.pid!, 'SIGSTOP');
  const bound = PEER_TIMEOUT_S * 1000 + 8000; // silence, then the workers stopped and the checkpoints tidied
  const n0 = await nodes[0].done;
  if (!netns) process.kill(nodes[1].child.pid!, 'SIGCONT');
  const n1 = await nodes[1].done;
  assert.notEqual(n0.code, 0);
  assert.notEqual(n1.code, 0);
  assert.match(
    n0.stderr,
    /distill: lost contact with node 1 \(.+\): it sent nothing for 3\.0 s \(not even a heartbeat\).*running the same command on every node again resumes/,
  );
  assert.match(n1.stderr, /distill: lost contact with node 0, the master \(.+\): .*running the same command on every node again resumes/);
  assert.ok(n0.endedAt - cutAt < bound, `node 0 ended ${n0.endedAt - cutAt} ms after the cut (bound ${bound})`);
  if (netns) assert.ok(n1.endedAt - cutAt < bound, `node 1 ended ${n1.endedAt - cutAt} ms after the cut (bound ${bound})`);
  const before = latestCheckpoint(runDir)!.step;
  assert.ok(before >= 2 && before < 16, `last checkpoint at step ${before}`);

  if (netns) sh('ip', '-n', NS[0], 'link', 'set', VETH[0], 'up');
  const again = [0, 1].map((r) => startNode(r, args, port + 1));
  const [a0, a1] = await Promise.all(again.map((n) => n.done));
  assert.equal(a0.code, 0, `node 0 failed on the rerun:\n${a0.stderr}`);
  assert.equal(a1.code, 0, `node 1 failed on the rerun:\n${a1.stderr}`);
  const result = JSON.parse(a0.stdout) as { steps: number; resumed_from_step: number };
  assert.equal(result.steps, 16);
  assert.equal(result.resumed_from_step, before);
});
