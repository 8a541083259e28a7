/**
 * Ring all-reduce (sum) of a Float32Array across a group of workers, in place.
 *
 * The array is cut into n chunks. Reduce-scatter: n − 1 rounds in which each worker sends one chunk to its right
 * neighbour and adds the chunk arriving from its left, after which worker i holds the full sum of chunk i + 1.
 * All-gather: n − 1 rounds passing the finished chunks around. Each worker sends 2(n − 1)/n of the array in all,
 * whatever n is. Every element's sum is computed once, on one worker, and copied to the others, so all workers end
 * with bit-identical values (what keeps data-parallel replicas' weights identical).
 */
import { arrayToFrame, frameToArray } from './tensorFrame.ts';
import type { Transport } from '../runtime/transport.ts';

export async function ringAllReduce(t: Transport, group: readonly number[], data: Float32Array, tag: number): Promise<void> {
  const n = group.length;
  const me = group.indexOf(t.rank);
  if (me < 0) throw new RangeError(`ring all-reduce: worker ${t.rank} is not in the group [${group.join(', ')}]`);
  if (n === 1) return;
  const right = group[(me + 1) % n];
  const left = group[(me - 1 + n) % n];
  // Chunk c covers [bound(c), bound(c + 1)); uneven lengths (and chunks of 0) are fine.
  const bound = (c: number): number => Math.floor((c * data.length) / n);
  const chunk = (c: number): Float32Array => {
    const i = ((c % n) + n) % n;
    return data.subarray(bound(i), bound(i + 1));
  };
  const index = (c: number): number => ((c % n) + n) % n;

  const exchange = async (sendChunk: number, recvChunk: number): Promise<Float32Array> => {
    const out = chunk(sendChunk);
    t.send(right, { kind: 'ring', tag, chunk: index(sendChunk), data: arrayToFrame(out, [out.length]) });
    const m = await t.receive(left, 'ring');
    if (m.tag !== tag || m.chunk !== index(recvChunk)) {
      throw new Error(
        `ring all-reduce out of step on worker ${t.rank}: expected reduction ${tag} chunk ${index(recvChunk)} from worker ${left}, got reduction ${m.tag} chunk ${m.chunk}. The workers disagree on the gradients' layout or step; this is a bug.`,
      );
    }
    const got = frameToArray(m.data);
    const into = chunk(recvChunk);
    if (!(got instanceof Float32Array) || got.length !== into.length) {
      throw new Error(
        `ring all-reduce on worker ${t.rank}: chunk ${index(recvChunk)} from worker ${left} has ${got.length} values, expected ${into.length} (the workers' gradient sizes differ)`,
      );
    }
    return got;
  };

  for (let s = 0; s < n - 1; s++) {
    const got = await exchange(me - s, me - s - 1);
    const into = chunk(me - s - 1);
    for (let i = 0; i < into.length; i++) into[i] += got[i];
  }
  for (let s = 0; s < n - 1; s++) {
    const got = await exchange(me + 1 - s, me - s);
    chunk(me - s).set(got);
  }
}
