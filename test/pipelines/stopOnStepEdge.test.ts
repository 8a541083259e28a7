/**
 * A stop ends on a step's edge: `backward` takes whatever arrives for a step as the step, so when the credits close
 * in the middle of a global batch (Ctrl-C, an abort), the source still reads that batch's remaining micro-batches,
 * and nothing of the next; a stop between global batches reads nothing more.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lastValueFrom, tap, toArray } from 'rxjs';
import { readBatches } from '../../operators/readBatches.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { createSampleSource } from '../../src/data/sampleSource.ts';
import { disposeBatch } from '../../src/train/batch.ts';
import { Credits } from '../../src/train/credits.ts';
import { fixture } from '../helpers/fixtures.ts';

await selectBackend('cpu', { log: null });
const data = createSampleSource({ dataPaths: fixture('megatron', 'small_text_document'), seqLength: 16, vocabSize: 1000 });

async function readUntilClosedAfter(closeAfter: number): Promise<string[]> {
  const credits = new Credits(8);
  let seen = 0;
  const batches = await lastValueFrom(
    readBatches(data, { seqLength: 16, globalBatchSize: 8, microBatchSize: 2, startStep: 0, maxSteps: 5, credits }).pipe(
      tap(() => {
        if (++seen === closeAfter) credits.close();
      }),
      toArray(),
    ),
  );
  for (const b of batches) disposeBatch(b);
  return batches.map((b) => `${b.position.step}/${b.position.micro}`);
}

test('credits closed mid-batch: the rest of that global batch is read, nothing after it', async () => {
  assert.deepEqual(await readUntilClosedAfter(6), ['0/0', '0/1', '0/2', '0/3', '1/0', '1/1', '1/2', '1/3']);
});

test("credits closed at a global batch's end: nothing more is read", async () => {
  assert.deepEqual(await readUntilClosedAfter(4), ['0/0', '0/1', '0/2', '0/3']);
});
