/**
 * A full float32 cache is exact: 5 steps of `distill run --teacher_cache` on the fixture pair and the real Megatron
 * dataset end with the same student weights as 5 steps of online distillation (≤1e-5 abs), with the teacher never
 * loaded; and the dense form of a full cache (another divergence) trains like the online run as well.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { DistillationRecipe } from '../../src/recipe/config.ts';
import { run } from '../../pipelines/run.ts';
import { cacheTeacher } from '../../pipelines/cacheTeacher.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import type { KdLossKind } from '../../src/losses/types.ts';
import { fixture, maxAbsDiff } from '../helpers/fixtures.ts';
import { fixturePairRecipe } from '../helpers/fixtureRecipe.ts';
import { tempDir } from './helpers.ts';

const DATA = { dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, split: '80,20,0', seed: 7 };
const STEPS = 5;
const GBS = 2;

function recipe(dir: string, name: string, teacher: { teacherPath?: string; teacherCache?: string }, kind: KdLossKind = 'forward_kl'): DistillationRecipe {
  return fixturePairRecipe({
    name,
    dir,
    // Both named, so that a cached run's teacherPath stays unset (the helper's default would give it the fixture teacher).
    teacherPath: teacher.teacherPath,
    teacherCache: teacher.teacherCache,
    data: DATA,
    trainer: { maxSteps: STEPS, globalBatchSize: GBS, microBatchSize: 1, saveInterval: STEPS, valCheckInterval: 0, logInterval: 1 },
    loss: { kind },
  });
}

const weights = (dir: string): Map<string, Float32Array> =>
  new Map([...readAllSafetensors(join(dir, 'model.safetensors'))].map(([k, v]) => [k, v.data as Float32Array]));

function worstDiff(a: string, b: string): number {
  const wa = weights(a);
  const wb = weights(b);
  let worst = 0;
  for (const [name, w] of wa) worst = Math.max(worst, maxAbsDiff(w, wb.get(name)!));
  return worst;
}

test("distilling from a full float32 cache gives the online run's 5-step weights (≤1e-5 abs)", async (t) => {
  const tmp = tempDir('cache-full-');
  try {
    const cacheDir = join(tmp.dir, 'cache');
    const c = await cacheTeacher({
      teacherPath: fixture('llama-teacher'),
      data: DATA,
      out: cacheDir,
      backend: 'cpu',
      numSamples: STEPS * GBS,
      spec: { method: 'full', topK: 0, samples: 0, sampleSeed: 0, valueDtype: 'float32', temperature: 1 },
      batchSamples: 2,
      partSamples: 4,
    });
    assert.ok(c.complete);
    assert.equal(c.written.length, 3);
    const logs: string[] = [];
    const online = await run(recipe(tmp.dir, 'online', { teacherPath: fixture('llama-teacher') }), { log: null });
    const cached = await run(recipe(tmp.dir, 'cached', { teacherCache: cacheDir }), { log: (l) => logs.push(l) });
    assert.ok(
      logs.some((l) => /teacher cache: .*the teacher is not loaded/.test(l)),
      logs.join('\n'),
    );
    for (let i = 0; i < STEPS; i++) {
      const rel = Math.abs(cached.steps[i].loss - online.steps[i].loss) / online.steps[i].loss;
      assert.ok(rel <= 1e-5, `step ${i}: loss ${cached.steps[i].loss} vs online ${online.steps[i].loss}`);
    }
    const worst = worstDiff(online.studentDir, cached.studentDir);
    t.diagnostic(`forward KL: max |Δw| ${worst.toExponential(2)}`);
    assert.ok(worst <= 1e-5, `final weights differ by ${worst} (abs)`);

    // Reverse KL cannot use the O(V) weighted form: the dense identity-head form must match the online run too.
    const onlineRev = await run(recipe(tmp.dir, 'online-rev', { teacherPath: fixture('llama-teacher') }, 'reverse_kl'), { log: null });
    const cachedRev = await run(recipe(tmp.dir, 'cached-rev', { teacherCache: cacheDir }, 'reverse_kl'), { log: null });
    const worstRev = worstDiff(onlineRev.studentDir, cachedRev.studentDir);
    t.diagnostic(`reverse KL (dense form): max |Δw| ${worstRev.toExponential(2)}`);
    assert.ok(worstRev <= 1e-5, `reverse KL: final weights differ by ${worstRev} (abs)`);
  } finally {
    tmp.remove();
  }
});
