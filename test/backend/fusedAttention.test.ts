/**
 * The fused attention kernels (webgpu: causal softmax, RoPE, each forward and backward) against the tfjs
 * composition they replace, written out here as it stood, on random inputs: values and gradients to 1e-5
 * relative error, masked probabilities exactly 0, no tensors leaked. On cpu and wasm the model code keeps the
 * composition, so those runs compare it with itself; the webgpu run is the real check, and asserts that the fused
 * kernels ran.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CausalMaskCache, causalAttention, describeCausalMask, maskedSoftmax, repeatKvHeads } from '../../src/model/attention.ts';
import { applyRope, RopeCache, ropeInvFreq, type RopeTables } from '../../src/model/rope.ts';
import { sequenceSplit } from '../../src/parallel/modelParallel/sequenceSplit.ts';
import { onEachBackend, tf } from '../helpers/backends.ts';
import { relError } from '../helpers/fixtures.ts';

const TOLERANCE = 1e-5;
const SEQ_LENGTHS = [1, 7, 64];

/** The composition the fused softmax replaces (attention.ts before the fusion). */
function softmaxComposition(scores: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  return tf.softmax(tf.add<tf.Tensor4D>(tf.mul(scores, scale), mask));
}

/** The composition the fused RoPE replaces (rope.ts before the fusion). */
function ropeComposition(x: tf.Tensor4D, t: RopeTables): tf.Tensor4D {
  const [x1, x2] = tf.split(x, 2, 3);
  return tf.add<tf.Tensor4D>(tf.mul(x, t.cos), tf.mul(tf.concat([x2, x1], 3), t.sinSigned));
}

function attentionComposition(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, mask: tf.Tensor2D, scale: number): tf.Tensor4D {
  const groups = q.shape[1] / k.shape[1];
  const scores = tf.matMul<tf.Tensor4D>(q, repeatKvHeads(k, groups), false, true);
  return tf.matMul<tf.Tensor4D>(softmaxComposition(scores, mask, scale), repeatKvHeads(v, groups));
}

/** relError, but 0 when both are exactly zero (a one-key row's softmax has a zero gradient). */
function relativeError(a: Float32Array, b: Float32Array): number {
  return b.every((x) => x === 0) && a.every((x) => x === 0) ? 0 : relError(a, b);
}

/** Worst relative error per backend, reported at the end of each test. */
class Worst {
  private readonly by = new Map<string, { err: number; where: string }>();
  note(backend: string, where: string, err: number): void {
    assert.ok(err <= TOLERANCE, `${backend} ${where}: relative error ${err}`);
    const w = this.by.get(backend);
    if (!w || err > w.err) this.by.set(backend, { err, where });
  }
  report(t: { diagnostic(m: string): void }): void {
    for (const [b, w] of this.by) t.diagnostic(`${b}: worst relative error ${w.err.toExponential(2)} (${w.where})`);
  }
}

/**
 * Value and gradient (of Σ out ⊙ r) of `fused` and `plain` at the same inputs; returns the relative errors, and
 * checks that the fused kernels named in `kernels` ran on webgpu (and any backend that registers them).
 */
async function compare(
  backend: string,
  inputs: tf.Tensor[],
  fused: (...xs: tf.Tensor[]) => tf.Tensor,
  plain: (...xs: tf.Tensor[]) => tf.Tensor,
  kernels: string[],
): Promise<{ value: number; grads: number[]; fusedValue: Float32Array; fusedGrads: Float32Array[] }> {
  const run = async (f: (...xs: tf.Tensor[]) => tf.Tensor): Promise<{ names: string[]; value: Float32Array; grads: Float32Array[] }> => {
    let outs: tf.Tensor[] = [];
    const info = await tf.profile(() => {
      outs = tf.tidy(() => {
        const value = f(...inputs);
        const r = tf.randomNormal(value.shape, 0, 1, 'float32', 7);
        const grads = tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), r)))(inputs);
        return [value, ...grads];
      });
    });
    const data = await Promise.all(outs.map(async (o) => (await o.data()) as Float32Array));
    tf.dispose(outs);
    return { names: info.kernelNames, value: data[0], grads: data.slice(1) };
  };
  const a = await run(fused);
  const b = await run(plain);
  const registers = backend === 'webgpu' || tf.getKernel(kernels[0], backend) !== undefined;
  if (registers) for (const k of kernels) assert.ok(a.names.includes(k), `${backend}: ${k} did not run (ran ${a.names.join(', ')})`);
  for (const k of kernels) assert.ok(!b.names.includes(k), `the composition ran ${k}`);
  return { value: relativeError(a.value, b.value), grads: a.grads.map((g, i) => relativeError(g, b.grads[i])), fusedValue: a.value, fusedGrads: a.grads };
}

test('causal softmax: fused forward and backward equal scale · mask · softmax, windows and one-key rows included', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    for (const window of [null, 3, 1]) {
      const masks = new CausalMaskCache(window);
      for (const seq of SEQ_LENGTHS) {
        for (const heads of [1, 3]) {
          const mask = masks.get(seq);
          const scores = tf.randomNormal([2, heads, seq, seq], 0, 4, 'float32', seq + heads) as tf.Tensor4D;
          const scale = 1 / Math.sqrt(16);
          const where = `seq ${seq}, heads ${heads}, window ${window}`;
          const r = await compare(
            backend,
            [scores],
            (s) => maskedSoftmax(s as tf.Tensor4D, mask, scale),
            (s) => softmaxComposition(s as tf.Tensor4D, mask, scale),
            ['CausalSoftmax', 'CausalSoftmaxGrad'],
          );
          worst.note(backend, `${where}, probabilities`, r.value);
          worst.note(backend, `${where}, d scores`, r.grads[0]);
          // Masked entries are exactly 0, value and gradient, as −1e9 makes them in the composition.
          const m = await mask.data();
          for (let i = 0; i < r.fusedValue.length; i++) {
            if (m[i % (seq * seq)] === 0) continue;
            // === 0, not Object.is: the composition's gradient there is −0, the kernel's +0.
            assert.ok(r.fusedValue[i] === 0, `${backend} ${where}: masked probability ${i} is ${r.fusedValue[i]}`);
            assert.ok(r.fusedGrads[0][i] === 0, `${backend} ${where}: masked gradient ${i} is ${r.fusedGrads[0][i]}`);
          }
          scores.dispose();
        }
      }
      masks.dispose();
    }
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('causal softmax under context parallelism: queries against gathered keys at global positions', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    for (const window of [null, 3]) {
      for (const [seq, cp, rank] of [
        [8, 2, 0],
        [8, 2, 1],
        [64, 4, 3],
        [7, 2, 1],
      ]) {
        const s = sequenceSplit(seq, cp, rank);
        const visible = (q: number, k: number): boolean => k <= q && (window === null || q - k < window);
        const mask = tf.tensor2d(Float32Array.from(s.local.flatMap((q) => s.keys.map((k) => (visible(q, k) ? 0 : -1e9)))), [s.local.length, s.keys.length]);
        const query = tf.tensor1d(Int32Array.from(s.local), 'int32');
        const key = tf.tensor1d(Int32Array.from(s.keys), 'int32');
        describeCausalMask(mask, { slidingWindow: window, positions: { query, key } });
        const scores = tf.randomNormal([2, 3, s.local.length, s.keys.length], 0, 3, 'float32', seq + rank) as tf.Tensor4D;
        const where = `seq ${seq}, cp ${cp}, rank ${rank}, window ${window}`;
        const r = await compare(
          backend,
          [scores],
          (x) => maskedSoftmax(x as tf.Tensor4D, mask, 0.125),
          (x) => softmaxComposition(x as tf.Tensor4D, mask, 0.125),
          ['CausalSoftmax', 'CausalSoftmaxGrad'],
        );
        worst.note(backend, `${where}, probabilities`, r.value);
        worst.note(backend, `${where}, d scores`, r.grads[0]);
        tf.dispose([mask, query, key, scores]);
      }
    }
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('RoPE: fused forward and backward equal x·cos + rotate_half(x)·sin, whole-sequence and gathered tables', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    for (const headDim of [8, 16]) {
      const cache = new RopeCache(ropeInvFreq(headDim, 10000, { type: 'default', factor: 1 }), headDim);
      for (const seq of SEQ_LENGTHS) {
        for (const heads of [1, 3]) {
          const tables = cache.get(seq);
          const x = tf.randomNormal([2, heads, seq, headDim], 0, 1, 'float32', seq * heads + headDim) as tf.Tensor4D;
          const where = `seq ${seq}, heads ${heads}, headDim ${headDim}`;
          const r = await compare(
            backend,
            [x],
            (y) => applyRope(y as tf.Tensor4D, tables),
            (y) => ropeComposition(y as tf.Tensor4D, tables),
            ['RotaryEmbedding', 'RotaryEmbeddingGrad'],
          );
          worst.note(backend, `${where}, value`, r.value);
          worst.note(backend, `${where}, dx`, r.grads[0]);
          x.dispose();
        }
      }
      // Context parallelism gathers the tables at a rank's global positions (shardedTransformer.ts).
      const full = cache.get(64);
      const pos = tf.tensor1d(Int32Array.from(sequenceSplit(64, 4, 1).local), 'int32');
      const tables = { cos: tf.gather(full.cos, pos), sinSigned: tf.gather(full.sinSigned, pos) };
      const x = tf.randomNormal([2, 2, pos.size, headDim], 0, 1, 'float32', 5) as tf.Tensor4D;
      const r = await compare(
        backend,
        [x],
        (y) => applyRope(y as tf.Tensor4D, tables),
        (y) => ropeComposition(y as tf.Tensor4D, tables),
        ['RotaryEmbedding', 'RotaryEmbeddingGrad'],
      );
      worst.note(backend, `gathered tables, headDim ${headDim}, value`, r.value);
      worst.note(backend, `gathered tables, headDim ${headDim}, dx`, r.grads[0]);
      tf.dispose([pos, tables.cos, tables.sinSigned, x]);
      cache.dispose();
    }
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('long rows (256 lanes, several keys per lane) and more rows or elements than one dispatch dimension holds', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    // This checks the kernels' launch geometry only; cpu and wasm would compare the composition with itself, slowly.
    if (backend !== 'webgpu') return;
    const before = tf.memory().numTensors;
    // [1, 1, 1030, 1030] takes the 256-lane workgroup (the window leaves rows both longer and shorter than 700
    // keys); [1, 8200, 8, 8] has 65,600 rows, past 65,535 workgroups per dimension, so the dispatch is reshaped to
    // 2-D and its spare workgroups must write nothing.
    for (const [shape, window] of [
      [[1, 1, 1030, 1030], 700],
      [[1, 8200, 8, 8], null],
    ] as [[number, number, number, number], number | null][]) {
      const masks = new CausalMaskCache(window);
      const mask = masks.get(shape[2]);
      const scores = tf.randomNormal(shape, 0, 4, 'float32', 9) as tf.Tensor4D;
      const where = `scores [${shape}], window ${window}`;
      const r = await compare(
        backend,
        [scores],
        (x) => maskedSoftmax(x as tf.Tensor4D, mask, 0.125),
        (x) => softmaxComposition(x as tf.Tensor4D, mask, 0.125),
        ['CausalSoftmax', 'CausalSoftmaxGrad'],
      );
      worst.note(backend, `${where}, probabilities`, r.value);
      worst.note(backend, `${where}, d scores`, r.grads[0]);
      scores.dispose();
      masks.dispose();
    }
    // 1040·64·128 elements = 66,560 workgroups of 128.
    const rope = new RopeCache(ropeInvFreq(128, 10000, { type: 'default', factor: 1 }), 128);
    const x = tf.randomNormal([1, 1040, 64, 128], 0, 1, 'float32', 10) as tf.Tensor4D;
    const tables = rope.get(64);
    const r = await compare(
      backend,
      [x],
      (y) => applyRope(y as tf.Tensor4D, tables),
      (y) => ropeComposition(y as tf.Tensor4D, tables),
      ['RotaryEmbedding', 'RotaryEmbeddingGrad'],
    );
    worst.note(backend, 'RoPE x [1, 1040, 64, 128], value', r.value);
    worst.note(backend, 'RoPE x [1, 1040, 64, 128], dx', r.grads[0]);
    x.dispose();
    rope.dispose();
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('causal attention with grouped KV heads: output and d q, d k, d v match the composition; kernels counted', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    for (const window of [null, 4]) {
      const masks = new CausalMaskCache(window);
      for (const seq of SEQ_LENGTHS) {
        const mask = masks.get(seq);
        const q = tf.randomNormal([2, 4, seq, 8], 0, 1, 'float32', 1) as tf.Tensor4D;
        const k = tf.randomNormal([2, 2, seq, 8], 0, 1, 'float32', 2) as tf.Tensor4D;
        const v = tf.randomNormal([2, 2, seq, 8], 0, 1, 'float32', 3) as tf.Tensor4D;
        const scale = 1 / Math.sqrt(8);
        const where = `seq ${seq}, window ${window}`;
        const r = await compare(
          backend,
          [q, k, v],
          (a, b, c) => causalAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, mask, scale),
          (a, b, c) => attentionComposition(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, mask, scale),
          ['CausalSoftmax', 'CausalSoftmaxGrad'],
        );
        worst.note(backend, `${where}, output`, r.value);
        r.grads.forEach((g, i) => worst.note(backend, `${where}, d ${'qkv'[i]}`, g));
        tf.dispose([q, k, v]);
      }
      masks.dispose();
    }
    if (backend === 'webgpu') {
      // Kernels of one forward, and of the backward alone (Reshape and Identity move no data on webgpu).
      const count = async (label: string, f: (y: tf.Tensor) => tf.Tensor, y: tf.Tensor): Promise<void> => {
        const names = async (g: () => tf.Tensor): Promise<string[]> => {
          let out: tf.Tensor[] = [];
          const info = await tf.profile(() => {
            out = [tf.tidy(g)];
          });
          tf.dispose(out);
          return info.kernels.map((kk) => kk.name).filter((n) => tf.getKernel(n, 'webgpu') && n !== 'Reshape' && n !== 'Identity');
        };
        const forward = await names(() => f(y));
        const dy = tf.onesLike(y);
        const both = await names(() => tf.grad(f)(y, dy));
        dy.dispose();
        const backward = both.slice(forward.length);
        t.diagnostic(`${label}: forward ${forward.length} (${forward.join(' ')}), backward ${backward.length} (${backward.join(' ')})`);
      };
      const masks = new CausalMaskCache(null);
      const mask = masks.get(16);
      const s = tf.randomNormal([1, 2, 16, 16]) as tf.Tensor4D;
      const rope = new RopeCache(ropeInvFreq(8, 10000, { type: 'default', factor: 1 }), 8);
      const x = tf.randomNormal([1, 2, 16, 8]) as tf.Tensor4D;
      await count('softmax part, composed', (y) => softmaxComposition(y as tf.Tensor4D, mask, 0.25), s);
      await count('softmax part, fused', (y) => maskedSoftmax(y as tf.Tensor4D, mask, 0.25), s);
      await count('RoPE, composed', (y) => ropeComposition(y as tf.Tensor4D, rope.get(16)), x);
      await count('RoPE, fused', (y) => applyRope(y as tf.Tensor4D, rope.get(16)), x);
      tf.dispose([s, x]);
      masks.dispose();
      rope.dispose();
    }
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('recomputed core attention (--recompute_granularity selective): output and d q, d k, d v equal the taped composition', async (t) => {
  const worst = new Worst();
  await onEachBackend(async (backend) => {
    const before = tf.memory().numTensors;
    // A mask the cache describes (the fused kernels where registered) and one built by hand (always the composition).
    const described = new CausalMaskCache(null);
    const windowed = new CausalMaskCache(3);
    for (const seq of SEQ_LENGTHS) {
      const byHand = tf.tensor2d(
        Float32Array.from({ length: seq * seq }, (_, i) => (i % seq <= Math.floor(i / seq) ? 0 : -1e9)),
        [seq, seq],
      );
      for (const [label, mask] of [
        ['described', described.get(seq)],
        ['windowed', windowed.get(seq)],
        ['by hand', byHand],
      ] as const) {
        for (const kvHeads of [4, 2, 1]) {
          const q = tf.randomNormal([2, 4, seq, 8], 0, 1, 'float32', 11) as tf.Tensor4D;
          const k = tf.randomNormal([2, kvHeads, seq, 8], 0, 1, 'float32', 12) as tf.Tensor4D;
          const v = tf.randomNormal([2, kvHeads, seq, 8], 0, 1, 'float32', 13) as tf.Tensor4D;
          const scale = 1 / Math.sqrt(8);
          const where = `seq ${seq}, ${label} mask, ${kvHeads} KV heads`;
          const r = await compare(
            backend,
            [q, k, v],
            (a, b, c) => causalAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, mask, scale, 'selective'),
            (a, b, c) => attentionComposition(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, mask, scale),
            label === 'by hand' ? [] : ['CausalSoftmax', 'CausalSoftmaxGrad'],
          );
          worst.note(backend, `${where}, output`, r.value);
          r.grads.forEach((g, i) => worst.note(backend, `${where}, d ${'qkv'[i]}`, g));
          tf.dispose([q, k, v]);
        }
      }
      byHand.dispose();
    }
    described.dispose();
    windowed.dispose();
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  });
  worst.report(t);
});

test('recomputed core attention keeps no [heads, seq, seq] tensor between forward and backward: the peak of a deep stack falls', async (t) => {
  await onEachBackend(async (backend) => {
    const [layers, heads, seq, d] = [8, 4, 64, 8];
    const probsBytes = 2 * heads * seq * seq * 4;
    const masks = new CausalMaskCache(null);
    const mask = masks.get(seq);
    const x = tf.randomNormal([2, heads, seq, d], 0, 1, 'float32', 5) as tf.Tensor4D;
    const peak = async (recompute: 'selective' | null): Promise<number> => {
      const stack = (y: tf.Tensor): tf.Scalar => {
        let h = y as tf.Tensor4D;
        for (let i = 0; i < layers; i++) h = tf.add(h, causalAttention(h, h, h, mask, 0.3, recompute));
        return tf.sum(h);
      };
      let out: tf.Tensor[] = [];
      const info = await tf.profile(() => {
        out = [tf.tidy(() => tf.grad(stack)(x))];
      });
      tf.dispose(out);
      return info.peakBytes;
    };
    const plain = await peak(null);
    const recomputed = await peak('selective');
    t.diagnostic(`${backend}: peak ${plain} bytes taped, ${recomputed} recomputed; one layer's probabilities ${probsBytes}`);
    // Taped, all 8 layers' probabilities live at the end of the forward; recomputed, a backward holds about three
    // [heads, seq, seq] tensors of one layer at once (probabilities, their gradient, the scores' gradient).
    assert.ok(plain - recomputed >= (layers - 4) * probsBytes, `${backend}: peak ${plain} taped vs ${recomputed} recomputed`);
    x.dispose();
    masks.dispose();
  });
});
