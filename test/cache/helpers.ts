/**
 * Shared pieces of the teacher-cache tests: the fixture rows as a SampleSource, a fingerprint for caches written
 * straight from logits, and temporary folders.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import type { SampleSource } from '../../operators/readBatches.ts';
import type { CacheFingerprint } from '../../src/cache/fingerprint.ts';
import type { CacheSpec } from '../../src/cache/spec.ts';
import { fixture } from '../helpers/fixtures.ts';

export interface FixtureTensors {
  inputIds: Int32Array;
  teacherLogits: Float32Array;
  studentLogits: Float32Array;
  mask: Float32Array;
  rows: number;
  seq: number;
  vocab: number;
}

export function fixtureTensors(): FixtureTensors {
  const t = readAllSafetensors(fixture('llama-teacher', 'expected.safetensors'));
  const s = readAllSafetensors(fixture('llama-student', 'expected.safetensors'));
  const m = readAllSafetensors(fixture('kd_mask.safetensors')).get('mask')!;
  const logits = t.get('logits')!;
  const [rows, seq, vocab] = logits.shape;
  return {
    inputIds: t.get('input_ids')!.data as Int32Array,
    teacherLogits: logits.data as Float32Array,
    studentLogits: s.get('logits')!.data as Float32Array,
    mask: m.data as Float32Array,
    rows,
    seq,
    vocab,
  };
}

/** The fixture's two rows as training samples of seq_length 17 (a dummy label appended to each). */
export function fixtureSource(f: FixtureTensors): SampleSource & { seqLength: number } {
  return {
    numSamples: f.rows,
    seqLength: f.seq,
    sample: (i) => {
      const out = new Int32Array(f.seq + 1);
      out.set(f.inputIds.subarray((i % f.rows) * f.seq, ((i % f.rows) + 1) * f.seq));
      return out;
    },
  };
}

export function testFingerprint(spec: CacheSpec, over: Partial<CacheFingerprint> = {}): CacheFingerprint {
  return {
    ...spec,
    teacherSha256: 'f'.repeat(64),
    vocabSize: 1000,
    tokenizerSha256: 'unknown',
    dataFingerprint: 'd'.repeat(64),
    dataPaths: 'fixture',
    split: '100,0,0',
    dataSeed: 1234,
    samplesPerEpoch: 2,
    seqLength: 17,
    sampleStart: 0,
    sampleEnd: 2,
    partSamples: 2,
    batchSamples: 2,
    ...over,
  };
}

export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
