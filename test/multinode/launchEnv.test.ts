/**
 * Slurm's compressed node lists, the torchrun and Slurm environments (and their errors), the placement of workers
 * on nodes, and the sbatch script `distill slurm` writes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkOneNode, expandNodelist, nodeLaunchFromEnv } from '../../src/runtime/launchEnv.ts';
import { nodeLayout } from '../../src/runtime/rendezvous.ts';
import { sbatchScript, shellQuote } from '../../src/cli/slurmCommand.ts';

test('Slurm node lists expand, keeping zero padding; the first host is the master', () => {
  assert.deepEqual(expandNodelist('node[01-03,07]'), ['node01', 'node02', 'node03', 'node07']);
  assert.deepEqual(expandNodelist('gpu5'), ['gpu5']);
  assert.deepEqual(expandNodelist('a[8-10],b1,c[001-002]-ib'), ['a8', 'a9', 'a10', 'b1', 'c001-ib', 'c002-ib']);
  assert.deepEqual(expandNodelist('r[1-2]n[1-2]'), ['r1n1', 'r1n2', 'r2n1', 'r2n2']);
  assert.throws(() => expandNodelist('node[01-03'), /unclosed "\["/);
  assert.throws(() => expandNodelist('node[5-3]'), /runs backwards/);
  assert.throws(() => expandNodelist('node[a-b]'), /not a number or a range/);
});

const want = { numNodes: 2, devicesPerNode: 4 };

test('torchrun environment: rank, master, and its consistency with the flags', () => {
  const env = { MASTER_ADDR: '10.0.0.1', MASTER_PORT: '29500', NODE_RANK: '1', NNODES: '2', NPROC_PER_NODE: '4' };
  const l = nodeLaunchFromEnv(want, env);
  assert.deepEqual([l.nodeRank, l.numNodes, l.masterAddr, l.masterPort, l.source], [1, 2, '10.0.0.1', 29500, 'torchrun']);
  assert.equal(l.joinTimeoutMs, 300_000);
  assert.equal(l.peerTimeoutMs, 30_000);
  assert.equal(nodeLaunchFromEnv(want, { ...env, DISTILL_NODE_TIMEOUT_S: '2.5', DISTILL_MAX_FRAME_MB: '8' }).peerTimeoutMs, 2500);
  assert.throws(() => nodeLaunchFromEnv(want, { NODE_RANK: '0', NNODES: '2' }), /MASTER_ADDR, MASTER_PORT .*not/);
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, NNODES: '3' }), /NNODES=3 but --num_nodes 2/);
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, NPROC_PER_NODE: '8' }), /NPROC_PER_NODE=8 but --devices 4/);
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, NODE_RANK: '2' }), /node rank 2 is not below the node count 2/);
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, MASTER_ADDR: '0.0.0.0' }), /wildcard.*listens only there/);
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, MASTER_PORT: '70000' }), /not a TCP port/);
  assert.throws(() => nodeLaunchFromEnv(want, {}), /does not know its rank.*MASTER_ADDR.*srun/);
});

test('Slurm environment: SLURM_PROCID is the node rank, node 0 the first host, the port follows the job id', () => {
  const env = { SLURM_PROCID: '1', SLURM_NTASKS: '2', SLURM_LOCALID: '0', SLURM_JOB_NODELIST: 'gpu[07-08]', SLURM_JOB_ID: '123456', SLURM_STEP_ID: '0' };
  const l = nodeLaunchFromEnv(want, env);
  assert.deepEqual([l.nodeRank, l.numNodes, l.masterAddr, l.masterPort, l.source], [1, 2, 'gpu07', 20000 + (123456 % 20000), 'slurm']);
  assert.equal(nodeLaunchFromEnv(want, { ...env, MASTER_ADDR: '10.1.1.7', MASTER_PORT: '29500' }).masterAddr, '10.1.1.7');
  // One task per GPU is not how distill runs: it forks its workers itself.
  assert.throws(() => nodeLaunchFromEnv(want, { ...env, SLURM_NTASKS: '8', SLURM_LOCALID: '3' }), /Slurm started 8 task\(s\).*--ntasks-per-node=1/);
  // torchrun's variables win where both are set (a torchrun inside an allocation).
  assert.equal(nodeLaunchFromEnv(want, { ...env, MASTER_ADDR: 'h', MASTER_PORT: '1', NODE_RANK: '0', NNODES: '2' }).source, 'torchrun');
});

test('a one-node run started as one of several nodes is refused', () => {
  assert.throws(() => checkOneNode(1, { NODE_RANK: '0', NNODES: '2' }), /one of 2 nodes.*--num_nodes is 1/);
  assert.throws(() => checkOneNode(1, { SLURM_PROCID: '0', SLURM_NTASKS: '4', SLURM_STEP_ID: '0' }), /SLURM_NTASKS=4/);
  checkOneNode(1, { SLURM_PROCID: '0', SLURM_NTASKS: '4' }); // an salloc shell, not under srun
  checkOneNode(1, {});
  checkOneNode(2, { NODE_RANK: '0', NNODES: '2' });
});

test('workers on nodes: students in blocks of --devices, teachers round-robin after them', () => {
  const l = nodeLayout({ studentWorkers: 4, teacherWorkers: 2, dpSize: 4 }, 2, 2);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(l.nodeOf), [0, 0, 1, 1, 0, 1]);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(l.deviceIndex), [0, 1, 0, 1, 2, 2]);
});

test('the sbatch script: one task per node, the run flags quoted, a SIGINT before the time limit', () => {
  const s = sbatchScript({
    nodes: 2,
    gpusPerNode: 8,
    partition: 'gpu',
    time: '04:00:00',
    account: 'proj',
    jobName: 'distill-kd',
    stopBeforeS: 180,
    distill: '/usr/bin/node /opt/distill/bin/distill.js',
    runArgs: ['--name', 'kd', '--data_paths', "1 a 1 b's", '--num_nodes', '2', '--devices', '8'],
    output: '/runs/kd/slurm-%j.out',
    chdir: '/work',
  });
  for (const line of [
    '#SBATCH --nodes=2',
    '#SBATCH --ntasks-per-node=1',
    '#SBATCH --gpus-per-node=8',
    '#SBATCH --partition=gpu',
    '#SBATCH --time=04:00:00',
    '#SBATCH --account=proj',
    '#SBATCH --signal=INT@180',
    '#SBATCH --chdir=/work',
  ]) {
    assert.ok(s.split('\n').includes(line), `${line} in\n${s}`);
  }
  assert.match(
    s,
    /\nsrun --kill-on-bad-exit=1 --ntasks-per-node=1 \/usr\/bin\/node \/opt\/distill\/bin\/distill\.js run --name kd --data_paths '1 a 1 b'\\''s' --num_nodes 2 --devices 8\n/,
  );
  assert.equal(shellQuote('a b'), "'a b'");
});
