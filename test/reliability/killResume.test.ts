/**
 * Crash anywhere, the CI cut of scripts/killResume.ts: `distill run` on the fixture pair is SIGKILLed at three
 * seeded points (inside a checkpoint write, between steps, ...) and `distill cache-teacher` at one (inside a part
 * write); each is rerun until it completes. After every kill each step-* directory and cache part reads whole;
 * the final student equals the uninterrupted run's exactly, the cache parts equal the uninterrupted ones byte for byte.
 * Budget: about 45 s on the 2-core machine (process start-up dominates).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheChain, prng, referenceCache, referenceTrain, trainChain } from './killHarness.ts';

test('SIGKILL during steps and checkpoint writes, then rerun: nothing half-written reads as complete; same student', async () => {
  const root = mkdtempSync(join(tmpdir(), 'kill-ci-'));
  try {
    const ref = await referenceTrain(root);
    const r = await trainChain(root, 'killed', ref, prng(20240611), 3);
    const detail = JSON.stringify({ kills: r.kills, missed: r.missed, problems: r.problems }, null, 1);
    assert.deepEqual(r.problems, [], detail);
    assert.equal(r.kills.length, 3, detail);
    assert.equal(r.maxDiff, 0, `final student differs from the uninterrupted run by ${r.maxDiff}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('SIGKILL during a teacher-cache part write, then rerun: parts read whole and equal an uninterrupted cache', async () => {
  const root = mkdtempSync(join(tmpdir(), 'kill-cache-ci-'));
  try {
    const ref = await referenceCache(join(root, 'reference'));
    const r = await cacheChain(join(root, 'killed'), ref, prng(7), 1);
    const detail = JSON.stringify({ kills: r.kills, missed: r.missed, problems: r.problems }, null, 1);
    assert.deepEqual(r.problems, [], detail);
    assert.equal(r.kills.length, 1, detail);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
