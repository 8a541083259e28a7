/**
 * How a group's ranks agree on their collectives, on CPU over in-process transports (the same msgpackr frames as
 * between processes): rank 0's ncclUniqueId reaches every rank byte for byte and each joins with its own rank; a
 * rank 0 without NCCL sends every rank to the ring with its reason; a rank without NCCL when rank 0 has it is
 * refused, named. And DataParallelRank sums its gradients through a given communicator: 3 training steps through
 * it give the plain run's weights exactly (the same arithmetic: sum, then the global norm).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { collectivesLine, groupCollectives, ncclUnavailable } from '../../src/parallel/nccl/bootstrap.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import { answerProbes, diagnoseHang } from '../../src/parallel/nccl/liveness.ts';
import { DataParallelRank } from '../../src/parallel/dataParallelRank.ts';
import { oneRankDataParallel } from '../helpers/oneRankDataParallel.ts';
import { deviceEnv } from '../../src/parallel/placement.ts';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { distillInThisProcess } from '../../pipelines/distill.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';

await tf.setBackend('cpu');

test('rank 0 makes the unique id, every rank joins with the same 128 bytes and its own rank', async () => {
  const transports = localTransports(4);
  // Workers 1, 3, 0 form the group, in that rank order; worker 2 is elsewhere.
  const group = [1, 3, 0];
  const fakes = new FakeCommunicatorGroup(3);
  const joined: { id: number[]; size: number; rank: number; name: string }[] = [];
  const id = Uint8Array.from({ length: 128 }, (_, i) => (i * 7 + 3) & 255);
  const made: number[] = [];
  const results = await Promise.all(
    group.map((w) =>
      groupCollectives(transports[w], group, 'dp', {
        unavailable: () => null,
        makeId: () => {
          made.push(w);
          return id;
        },
        join: (got, size, rank, name) => {
          joined.push({ id: Array.from(got), size, rank, name });
          return fakes.members[rank];
        },
      }),
    ),
  );
  assert.deepEqual(made, [1], 'only rank 0 (worker 1) makes an id');
  assert.deepEqual(joined.map((j) => j.rank).sort(), [0, 1, 2]);
  for (const j of joined) {
    assert.deepEqual(j.id, Array.from(id));
    assert.equal(j.size, 3);
    assert.equal(j.name, 'dp');
  }
  results.forEach((r, i) => {
    assert.equal(r.kind, 'nccl');
    if (r.kind === 'nccl') assert.equal(r.comm.rank, i);
  });
  assert.match(collectivesLine('dp', 3, results[0]), /group dp \(3 ranks\): in-process fake, device to device/);
});

test('a rank 0 that cannot run NCCL sends the whole group to the ring, with its reason', async () => {
  const transports = localTransports(2);
  const results = await Promise.all(
    [0, 1].map((w) =>
      groupCollectives(transports[w], [0, 1], 'dp', {
        unavailable: () => (w === 0 ? 'libnccl.so.2 (NCCL) is missing' : null),
        join: () => {
          throw new Error('must not join');
        },
      }),
    ),
  );
  assert.deepEqual(
    results.map((r) => r.kind),
    ['ring', 'ring'],
  );
  assert.match(collectivesLine('dp', 2, results[1]), /ring all-reduce .* because rank 0 of the group cannot run NCCL: libnccl.so.2 \(NCCL\) is missing/);
});

test('a rank that cannot run NCCL while rank 0 does is refused, naming it', async () => {
  const transports = localTransports(2);
  const fakes = new FakeCommunicatorGroup(2);
  const [r0, r1] = await Promise.allSettled(
    [0, 1].map((w) =>
      groupCollectives(transports[w], [0, 1], 'tp 0', {
        unavailable: () => (w === 1 ? 'libnccl.so.2 failed to load' : null),
        makeId: () => new Uint8Array(128),
        join: (_id, _size, rank) => fakes.members[rank],
      }),
    ),
  );
  assert.equal(r0.status, 'fulfilled');
  assert.equal(r1.status, 'rejected');
  assert.match(
    String((r1 as PromiseRejectedResult).reason),
    /group tp 0: rank 0 runs the collectives on NCCL but rank 1 \(worker 1\) cannot: libnccl.so.2 failed to load/,
  );
});

test('on a CPU backend every rank picks the ring without a message; the reason names the backend', async () => {
  const transports = localTransports(2);
  const results = await Promise.all([0, 1].map((w) => groupCollectives(transports[w], [0, 1], 'dp')));
  assert.deepEqual(
    results.map((r) => r.kind),
    ['ring', 'ring'],
  );
  assert.match(ncclUnavailable() ?? '', /the cpu backend keeps its tensors off CUDA devices/);
});

test('DataParallelRank sums its gradients through the communicator it is given, the stop flag included', async () => {
  const transports = localTransports(2);
  const fakes = new FakeCommunicatorGroup(2);
  const lines: string[] = [];
  const stops: number[] = [];
  const ranks = [0, 1].map(
    (r) =>
      new DataParallelRank({
        transport: transports[r],
        dpRank: r,
        dpSize: 2,
        group: [0, 1],
        deviceIndex: 0,
        globalBatchSize: 2,
        microBatchSize: 1,
        onStopAgreed: () => stops.push(r),
        log: (l) => lines.push(l),
        communicator: fakes.members[r],
      }),
  );
  const pools = ranks.map((d) => d.credits(10, 0));
  pools[1].close();
  const grads = [0, 1].map(
    (r) =>
      new Map<string, tf.Tensor>([
        ['b', tf.tensor1d([r + 1, 10 * (r + 1)])],
        [
          'a',
          tf.tensor2d([
            [r, r],
            [r, r],
          ]),
        ],
      ]),
  );
  await Promise.all(ranks.map((d, r) => d.reduceGradients(grads[r])));
  for (const g of grads) {
    assert.deepEqual([...g.keys()], ['b', 'a']);
    assert.deepEqual(Array.from(g.get('b')!.dataSync()), [3, 30]);
    assert.deepEqual(Array.from(g.get('a')!.dataSync()), [1, 1, 1, 1]);
  }
  assert.deepEqual(stops.sort(), [0, 1], "rank 1's stop reached both ranks");
  assert.deepEqual(lines, ['collectives of group dp (2 ranks): in-process fake, device to device']);
  for (const g of grads) tf.dispose([...g.values()]);
});

test('a worker leading two groups may hand their ids out in either order', async () => {
  const transports = localTransports(2);
  const fakes = { a: new FakeCommunicatorGroup(2), b: new FakeCommunicatorGroup(2) };
  const o = (g: 'a' | 'b') => ({
    unavailable: () => null,
    makeId: () => new Uint8Array(128).fill(g === 'a' ? 1 : 2),
    join: (id: Uint8Array, _size: number, rank: number) => {
      assert.equal(id[0], g === 'a' ? 1 : 2, `group ${g} got group ${g}'s id`);
      return fakes[g].members[rank];
    },
  });
  // Worker 0 makes a then b; worker 1 asks for b first.
  const lead = (async () => [await groupCollectives(transports[0], [0, 1], 'a', o('a')), await groupCollectives(transports[0], [0, 1], 'b', o('b'))])();
  const member = (async () => [await groupCollectives(transports[1], [0, 1], 'b', o('b')), await groupCollectives(transports[1], [0, 1], 'a', o('a'))])();
  const [l, m] = await Promise.all([lead, member]);
  assert.deepEqual(
    [...l, ...m].map((c) => c.kind),
    ['nccl', 'nccl', 'nccl', 'nccl'],
  );
});

test("cuda workers are pinned one GPU each (NCCL refuses two ranks on one GPU), through the launcher's own CUDA_VISIBLE_DEVICES", () => {
  assert.deepEqual(deviceEnv('cuda', 1, {}), { CUDA_VISIBLE_DEVICES: '1' });
  assert.deepEqual(deviceEnv('cuda', 1, { CUDA_VISIBLE_DEVICES: '4,6' }), { CUDA_VISIBLE_DEVICES: '6' });
  assert.deepEqual(deviceEnv('cpu', 1, {}), {});
});

test("training the fixture pair 3 steps on cpu with DP 1 through a (fake) communicator gives the plain run's weights", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'distill-comm-'));
  const recipe = (name: string): DistillationRecipe =>
    fixturePairRecipe({
      name,
      dir,
      trainer: { maxSteps: 3, globalBatchSize: 2, microBatchSize: 1, saveInterval: 100, valCheckInterval: 100, limitValBatches: 1, logInterval: 1 },
    });
  const plain = await distillInThisProcess(recipe('plain'), { log: null, progress: false });
  const fakes = new FakeCommunicatorGroup(1);
  const dp = oneRankDataParallel(fakes.members[0], { globalBatchSize: 2, microBatchSize: 1 });
  const viaComm = await distillInThisProcess(recipe('comm'), { log: null, progress: false }, dp);
  assert.equal(fakes.calls.length, 3, 'one bucket all-reduced per step');
  assert.deepEqual(
    viaComm.steps.map((s) => [s.step, s.loss, s.gradNorm]),
    plain.steps.map((s) => [s.step, s.loss, s.gradNorm]),
  );
  const w = (d: string): Map<string, Float32Array> =>
    new Map([...readAllSafetensors(join(d, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));
  const [a, b] = [w(plain.studentDir), w(viaComm.studentDir)];
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [name, x] of a) assert.equal(maxAbsDiff(x, b.get(name)!), 0, name);
});

test('a collective that does not finish names its rank: a silent one as hung, one with fewer collectives as behind', async () => {
  const transports = localTransports(4);
  // Worker 1 has issued 4 collectives of the group, worker 3 as many as the asker (5); worker 2 never answers.
  answerProbes(transports[1], 'dp', () => 4);
  answerProbes(transports[3], 'dp', () => 5);
  answerProbes(transports[1], 'tp', () => 99);
  const t0 = performance.now();
  const report = await diagnoseHang(transports[0], [0, 1, 2, 3], 'dp', 5, 200);
  const took = performance.now() - t0;
  assert.deepEqual(report.ranks, [1, 2]);
  assert.match(report.text, /rank 2 \(worker 2\) did not answer within 0\.2 s: it is hung/);
  assert.match(report.text, /rank 1 \(worker 1\) has issued 4 collectives of the group, this rank 5: it has not reached this one/);
  assert.ok(took >= 190 && took < 1500, `answered after ${took} ms, bound 200 ms`);
  // Everyone as far as the asker: NCCL itself is stuck.
  const all = await diagnoseHang(transports[0], [0, 3], 'dp', 5, 200);
  assert.deepEqual(all.ranks, []);
  assert.match(all.text, /every rank answered and has issued 5 collectives of the group: NCCL's own transport is stuck/);
});

test('bootstrap wires the probes: a fake rank that hangs is named through the transport', async () => {
  const transports = localTransports(2);
  const fakes = new FakeCommunicatorGroup(2, 400);
  const made = await Promise.all(
    [0, 1].map((w) =>
      groupCollectives(transports[w], [0, 1], 'dp', {
        unavailable: () => null,
        makeId: () => new Uint8Array(128),
        join: (_id, _size, rank) => fakes.members[rank],
        probeWaitMs: 300,
      }),
    ),
  );
  const c0 = made[0].kind === 'nccl' ? made[0].comm : null;
  assert.ok(c0?.diagnoseHang);
  // Rank 0 issued one collective that rank 1 never joins.
  void c0.allReduceSum(tf.ones([2])).catch(() => {});
  const report = await c0.diagnoseHang(c0.issued);
  assert.deepEqual(report.ranks, [1]);
  assert.match(report.text, /rank 1 \(worker 1\) has issued 0 collectives of the group, this rank 1/);
});
