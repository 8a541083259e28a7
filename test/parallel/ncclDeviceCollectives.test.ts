/**
 * The model-parallel collectives over communicators (DeviceCollectives), on CPU with the fake standing in for NCCL:
 * for 4 workers in two TP groups and the world group, every collective gives what the ring-based Collectives gives
 * (tensor all-reduce, host-array all-reduce, all-gather of uneven lengths, max), each group's communicator is
 * made once at its first use, and a group whose rank 0 cannot run NCCL falls back to the ring, saying why.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { DeviceCollectives } from '../../src/parallel/nccl/deviceCollectives.ts';
import { FakeCommunicatorGroup } from '../../src/parallel/nccl/fakeCommunicator.ts';
import type { BootstrapOptions } from '../../src/parallel/nccl/bootstrap.ts';

await tf.setBackend('cpu');

const WORLD = [0, 1, 2, 3];
const TP = (w: number): number[] => (w < 2 ? [0, 1] : [2, 3]);

/** What every worker computes: a TP all-reduce of a tensor, a world all-reduce of an array, an uneven all-gather and a max. */
async function program(c: Collectives, w: number): Promise<number[][]> {
  const x = tf.tensor2d([
    [w + 0.25, -w],
    [2 * w, 1.5],
  ]);
  const tpSum = await c.allReduceTensor(TP(w), x);
  const sums = Float32Array.from([w + 1, 0.1 * w, 1e-3]);
  await c.allReduceSum(WORLD, sums);
  const gathered = await c.allGather(
    TP(w),
    Float32Array.from({ length: w % 2 ? 3 : 1 }, (_, i) => 10 * w + i),
    [1, 3],
  );
  const max = await c.allReduceMax(WORLD, Float32Array.from([w, -w, w % 2]));
  const out = [Array.from(tpSum.dataSync()), Array.from(sums), Array.from(gathered), Array.from(max)];
  tf.dispose([x, tpSum]);
  return out;
}

test("DeviceCollectives over communicators gives the ring's results for TP and world groups; one communicator per group", async () => {
  const ringTransports = localTransports(4);
  const want = await Promise.all(WORLD.map((w) => program(new Collectives(ringTransports[w]), w)));

  const fakes = new Map<string, FakeCommunicatorGroup>();
  const joins: string[] = [];
  const bootstrap = (w: number): BootstrapOptions => ({
    unavailable: () => null,
    makeId: () => new Uint8Array(128),
    join: (_id, size, rank, name) => {
      joins.push(`${name}#${rank}`);
      if (!fakes.has(name)) fakes.set(name, new FakeCommunicatorGroup(size));
      assert.equal(fakes.get(name)!.size, size, `worker ${w}: group ${name}`);
      return fakes.get(name)!.members[rank];
    },
  });
  const lines: string[] = [];
  const transports = localTransports(4);
  const colls = WORLD.map((w) => new DeviceCollectives(transports[w], { log: (l) => lines.push(l), bootstrap: bootstrap(w) }));
  const got = await Promise.all(WORLD.map((w) => program(colls[w], w)));
  got.forEach((g, w) => g.forEach((v, i) => assert.deepEqual(v, want[w][i], `worker ${w}, collective ${i}`)));
  // Each group joined once per rank, though used twice (the world: a sum and a max).
  assert.deepEqual(joins.sort(), ['[0,1,2,3]#0', '[0,1,2,3]#1', '[0,1,2,3]#2', '[0,1,2,3]#3', '[0,1]#0', '[0,1]#1', '[2,3]#0', '[2,3]#1']);
  assert.deepEqual(lines.sort(), [
    'collectives of group [0,1,2,3] (4 ranks): in-process fake, device to device',
    'collectives of group [0,1] (2 ranks): in-process fake, device to device',
    'collectives of group [2,3] (2 ranks): in-process fake, device to device',
  ]);
  await Promise.all(colls.map((c) => c.dispose()));
});

test('a group whose rank 0 cannot run NCCL uses the ring, and says why', async () => {
  const transports = localTransports(4);
  const lines: string[] = [];
  const colls = WORLD.map(
    (w) =>
      new DeviceCollectives(transports[w], {
        log: (l) => lines.push(l),
        bootstrap: {
          unavailable: () => 'libnccl.so.2 (NCCL) is missing',
          join: () => {
            throw new Error('must not join');
          },
        },
      }),
  );
  const ringTransports = localTransports(4);
  const want = await Promise.all(WORLD.map((w) => program(new Collectives(ringTransports[w]), w)));
  const got = await Promise.all(WORLD.map((w) => program(colls[w], w)));
  assert.deepEqual(got, want);
  assert.ok(
    lines.some((l) => /group \[0,1,2,3\] \(4 ranks\): the ring all-reduce .* because libnccl.so.2 \(NCCL\) is missing/.test(l)),
    lines.join('\n'),
  );
});
