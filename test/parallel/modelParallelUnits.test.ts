/**
 * The model-parallel engine's pieces on their own, without training: the rank layout (Megatron's tp-cp-dp-pp
 * order), pipeline stage plans and the layouts a model refuses, which part of each Hugging Face tensor a
 * tensor-parallel rank holds, context parallelism's load-balanced sequence split, the 1F1B schedule, and the
 * collectives over in-process transports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { readModelConfig } from '../../src/checkpoint/load.ts';
import { ConfigError } from '../../src/errors.ts';
import { parseModelConfig, type ModelConfig } from '../../src/model/config.ts';
import { expectedParamShapes } from '../../src/model/params.ts';
import { checkModelLayout, coordsOf, groupOf, rankOf, stagePlan, worldSize, type ParallelLayout } from '../../src/parallel/layout.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { Collectives } from '../../src/parallel/modelParallel/collectives.ts';
import { oneForwardOneBackward, peakInFlight, type ScheduleAction } from '../../src/parallel/modelParallel/pipelineSchedule.ts';
import { positionsOf, sequenceSplit, takePositions } from '../../src/parallel/modelParallel/sequenceSplit.ts';
import { localParams, placeSlice, sliceTensor, type LocalParam } from '../../src/parallel/modelParallel/shardSpec.ts';
import { fixture } from '../helpers/fixtures.ts';

await selectBackend('cpu', { log: null });

const layout = (l: Partial<ParallelLayout>): ParallelLayout => ({ tp: 1, cp: 1, dp: 1, pp: 1, ...l });
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

function gpt2Config(over: Record<string, unknown> = {}): ModelConfig {
  const raw = JSON.parse(readFileSync(fixture('gpt2-tiny', 'config.json'), 'utf8')) as Record<string, unknown>;
  return parseModelConfig({ ...raw, n_head: 4, ...over }, 'gpt2 (test)');
}

function llamaConfig(over: Record<string, unknown>): ModelConfig {
  const raw = JSON.parse(readFileSync(fixture('llama-teacher', 'config.json'), 'utf8')) as Record<string, unknown>;
  return parseModelConfig({ ...raw, ...over }, 'llama (test)');
}

const student = readModelConfig(fixture('llama-student'));
const teacher = readModelConfig(fixture('llama-teacher'));

// ---- layout.ts ----

test('coordsOf and rankOf are inverse over the whole layout, in Megatron order (tp fastest, then cp, dp, pp)', () => {
  const l = layout({ tp: 2, cp: 3, dp: 2, pp: 2 });
  assert.equal(worldSize(l), 24);
  const seen = new Set<string>();
  for (const r of range(24)) {
    const c = coordsOf(l, r);
    assert.ok(c.tp < 2 && c.cp < 3 && c.dp < 2 && c.pp < 2, `rank ${r}: ${JSON.stringify(c)}`);
    assert.equal(rankOf(l, c), r);
    seen.add(JSON.stringify(c));
  }
  assert.equal(seen.size, 24, 'every rank has its own coordinates');
  assert.deepEqual(coordsOf(l, 1), { tp: 1, cp: 0, dp: 0, pp: 0 });
  assert.deepEqual(coordsOf(l, 2), { tp: 0, cp: 1, dp: 0, pp: 0 });
  assert.deepEqual(coordsOf(l, 6), { tp: 0, cp: 0, dp: 1, pp: 0 });
  assert.deepEqual(coordsOf(l, 12), { tp: 0, cp: 0, dp: 0, pp: 1 });
  assert.deepEqual(coordsOf(l, 23), { tp: 1, cp: 2, dp: 1, pp: 1 });
  assert.throws(() => coordsOf(l, 24), RangeError);
  assert.throws(() => coordsOf(l, -1), RangeError);
  assert.throws(() => coordsOf(l, 1.5), RangeError);
});

test('groupOf: the ranks that differ only along the named axes; each axis partitions the world', () => {
  const l = layout({ tp: 2, cp: 2, dp: 2, pp: 2 });
  assert.deepEqual(groupOf(l, 0, ['tp']), [0, 1]);
  assert.deepEqual(groupOf(l, 5, ['tp']), [4, 5]);
  assert.deepEqual(groupOf(l, 0, ['cp']), [0, 2]);
  assert.deepEqual(groupOf(l, 0, ['dp']), [0, 4]);
  assert.deepEqual(groupOf(l, 0, ['pp']), [0, 8]);
  assert.deepEqual(groupOf(l, 3, ['dp', 'cp']), [1, 3, 5, 7]);
  assert.deepEqual(groupOf(l, 9, []), [9]);
  assert.deepEqual(groupOf(l, 9, ['tp', 'cp', 'dp', 'pp']), range(16));
  const axes = [['tp'], ['cp'], ['dp'], ['pp'], ['dp', 'cp'], ['tp', 'pp']] as const;
  for (const vary of axes) {
    const groups = new Map<string, number[]>();
    for (const r of range(16)) {
      const g = groupOf(l, r, vary);
      assert.ok(g.includes(r), `rank ${r} is in its own ${vary} group`);
      assert.equal(
        g.length,
        vary.reduce((a, ax) => a * l[ax], 1),
      );
      groups.set(g.join(','), g);
    }
    assert.equal(
      [...groups.values()]
        .flat()
        .sort((a, b) => a - b)
        .join(','),
      range(16).join(','),
      `${vary} groups partition the world`,
    );
  }
});

test('stagePlan: contiguous stages, the remainder to the earlier ones; a 1-layer student over 2 stages puts the head alone on stage 1', () => {
  assert.deepEqual(stagePlan(1, 2, 0), { stage: 0, stages: 2, firstLayer: 0, endLayer: 1, hasEmbedding: true, hasHead: false });
  assert.deepEqual(stagePlan(1, 2, 1), { stage: 1, stages: 2, firstLayer: 1, endLayer: 1, hasEmbedding: false, hasHead: true });
  assert.deepEqual(stagePlan(4, 1, 0), { stage: 0, stages: 1, firstLayer: 0, endLayer: 4, hasEmbedding: true, hasHead: true });
  const spans = (n: number, s: number): [number, number][] =>
    range(s).map((k) => {
      const p = stagePlan(n, s, k);
      return [p.firstLayer, p.endLayer];
    });
  assert.deepEqual(spans(5, 3), [
    [0, 2],
    [2, 4],
    [4, 5],
  ]);
  assert.deepEqual(spans(7, 3), [
    [0, 3],
    [3, 5],
    [5, 7],
  ]);
  assert.deepEqual(spans(2, 3), [
    [0, 1],
    [1, 2],
    [2, 2],
  ]);
  for (const n of [1, 2, 3, 5, 8]) {
    for (let s = 1; s <= n + 1; s++) {
      const sp = spans(n, s);
      assert.equal(sp[0][0], 0);
      assert.equal(sp[s - 1][1], n);
      for (let k = 1; k < s; k++) assert.equal(sp[k][0], sp[k - 1][1], `${n} layers / ${s} stages: contiguous`);
      // Only the last stage may be empty, and sizes never grow towards the end.
      for (let k = 0; k < s - 1; k++) assert.ok(sp[k][1] > sp[k][0], `${n} layers / ${s} stages: stage ${k} is empty`);
      for (let k = 1; k < s; k++) assert.ok(sp[k][1] - sp[k][0] <= sp[k - 1][1] - sp[k - 1][0]);
    }
  }
});

test('checkModelLayout accepts the fixture pair and GPT-2 with 4 heads under TP 2, PP 2, CP 2', () => {
  for (const l of [layout({ tp: 2 }), layout({ pp: 2 }), layout({ cp: 2 }), layout({ tp: 2, pp: 2, cp: 2, dp: 2 })]) {
    checkModelLayout(l, student, 'student');
    checkModelLayout(l, teacher, 'teacher');
    checkModelLayout(l, gpt2Config(), 'student');
  }
  // The teacher's 2 KV heads replicate over 4 ranks; the student's 1 over 2.
  checkModelLayout(layout({ tp: 4 }), teacher, 'teacher');
  checkModelLayout(layout({ pp: 3 }), teacher, 'teacher');
});

test('checkModelLayout refuses, with the arithmetic in the message', () => {
  const refuses = (l: ParallelLayout, c: ModelConfig, pattern: RegExp): void => {
    assert.throws(
      () => checkModelLayout(l, c, 'student'),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError, `a ConfigError, got ${String(e)}`);
        assert.match(e.message, pattern);
        assert.match(e.message, /^student \(/);
        return true;
      },
    );
  };
  const gpt2Tiny = readModelConfig(fixture('gpt2-tiny'));
  refuses(layout({ tp: 2 }), gpt2Tiny, /3 attention heads do not split over --tp_size 2 \(3 mod 2 = 1\)/);
  refuses(
    layout({ tp: 2 }),
    gpt2Config({ vocab_size: 1001 }),
    /vocabulary of 1001 does not split over --tp_size 2 \(1001 mod 2 = 1\); pad it to a multiple of 2/,
  );
  refuses(layout({ tp: 4 }), gpt2Config({ vocab_size: 1002 }), /1002 mod 4 = 2/);
  refuses(
    layout({ tp: 2 }),
    llamaConfig({ num_attention_heads: 6, num_key_value_heads: 3, hidden_size: 96 }),
    /3 KV heads neither split over --tp_size 2 nor replicate evenly \(2 mod 3 = 2\)/,
  );
  refuses(layout({ tp: 2 }), llamaConfig({ intermediate_size: 161 }), /MLP width 161 does not split over --tp_size 2/);
  refuses(layout({ pp: 3 }), student, /--pp_size 3 stages need at least 2 transformer layers .* it has 1/);
  refuses(layout({ pp: 4 }), teacher, /--pp_size 4 stages need at least 3 transformer layers .* it has 2/);
});

// ---- shardSpec.ts ----

/** A full tensor of distinct values, so that any misplaced element shows. */
function distinct(shape: number[], salt: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  return Float32Array.from({ length: n }, (_, i) => i + 1 + salt / 1000);
}

const shardCases: [string, ModelConfig, ParallelLayout[]][] = [
  ['llama-student', student, [layout({ tp: 2 }), layout({ tp: 2, pp: 2 })]],
  ['llama-teacher', teacher, [layout({ tp: 2 }), layout({ tp: 4 }), layout({ tp: 2, pp: 2 }), layout({ tp: 4, pp: 3 })]],
  ['gpt2 (4 heads)', gpt2Config(), [layout({ tp: 2 }), layout({ tp: 4 }), layout({ tp: 2, pp: 2 })]],
];

for (const [label, c, layouts] of shardCases) {
  for (const l of layouts) {
    test(`shardSpec, ${label} under tp ${l.tp} × pp ${l.pp}: the TP slices rebuild every full tensor exactly; each value counts once in the norm`, () => {
      const full = new Map([...expectedParamShapes(c)].map(([n, s], k) => [n, { shape: s, data: distinct(s, k) }] as const));
      const inNormCount = new Map<string, number>();
      const stagesOf = new Map<string, number[]>();
      for (let pp = 0; pp < l.pp; pp++) {
        const rebuilt = new Map<string, Float32Array>();
        const specs = range(l.tp).map((tp) => localParams(c, l, { tp, cp: 0, dp: 0, pp }));
        // Every TP rank of a stage holds the same tensors.
        for (const s of specs) assert.deepEqual([...s.keys()], [...specs[0].keys()], `stage ${pp}: TP ranks hold different tensors`);
        for (const [tp, spec] of specs.entries()) {
          for (const [name, p] of spec) {
            const f = full.get(name);
            assert.ok(f, `stage ${pp} rank ${tp} holds ${name}, which the model does not have`);
            assert.deepEqual(p.fullShape, f.shape, name);
            const local = sliceTensor(f.data, p.fullShape, p.slice);
            assert.equal(
              local.length,
              p.localShape.reduce((a, b) => a * b, 1),
              `${name}: the slice has its local shape's size`,
            );
            if (!rebuilt.has(name)) rebuilt.set(name, new Float32Array(f.data.length).fill(Number.NaN));
            placeSlice(rebuilt.get(name)!, p.fullShape, p.slice, local);
            if (p.inNorm) inNormCount.set(name, (inNormCount.get(name) ?? 0) + local.length);
            if (tp === 0) stagesOf.set(name, [...(stagesOf.get(name) ?? []), pp]);
          }
        }
        for (const [name, r] of rebuilt) assert.deepEqual(r, full.get(name)!.data, `stage ${pp}: ${name} is not rebuilt exactly from its ${l.tp} TP slices`);
      }
      for (const [name, f] of full) {
        assert.equal(inNormCount.get(name) ?? 0, f.data.length, `${name}: values counted in the grad norm over all ranks`);
        const stages = stagesOf.get(name) ?? [];
        const tiedCopy = c.tieWordEmbeddings && (name === 'model.embed_tokens.weight' || name === 'transformer.wte.weight') && l.pp > 1;
        assert.deepEqual(stages, tiedCopy ? [0, l.pp - 1] : [stages[0]], `${name} on stages ${stages}`);
        assert.equal(stages.length >= 1, true, `${name} is on no stage`);
      }
    });
  }
}

test('shardSpec: column/row/vocabulary splits of the llama-teacher under TP 2 (KV heads split: 2 over 2)', () => {
  const [r0, r1] = [0, 1].map((tp) => localParams(teacher, layout({ tp: 2 }), { tp, cp: 0, dp: 0, pp: 0 }));
  const q = 'model.layers.0.self_attn.q_proj.weight';
  const k = 'model.layers.0.self_attn.k_proj.weight';
  assert.deepEqual(r1.get(q), {
    fullShape: [64, 64],
    localShape: [32, 64],
    slice: { axis: 0, ranges: [[32, 64]] },
    replicas: 1,
    gradientSum: false,
    inNorm: true,
  });
  assert.deepEqual(r1.get(k)!.slice, { axis: 0, ranges: [[16, 32]] });
  assert.equal(r1.get(k)!.replicas, 1);
  assert.equal(r1.get(k)!.gradientSum, false);
  assert.deepEqual(r1.get('model.layers.0.self_attn.o_proj.weight')!.slice, { axis: 1, ranges: [[32, 64]] });
  assert.deepEqual(r1.get('model.layers.1.mlp.down_proj.weight')!.slice, { axis: 1, ranges: [[80, 160]] });
  assert.deepEqual(r1.get('model.layers.1.mlp.gate_proj.weight')!.slice, { axis: 0, ranges: [[80, 160]] });
  assert.deepEqual(r1.get('lm_head.weight')!.slice, { axis: 0, ranges: [[500, 1000]] });
  assert.deepEqual(r0.get('model.embed_tokens.weight')!.slice, { axis: 0, ranges: [[0, 500]] });
  const norm = (s: Map<string, LocalParam>): LocalParam => s.get('model.norm.weight')!;
  assert.equal(norm(r0).slice, null);
  assert.equal(norm(r0).replicas, 2);
  assert.equal(norm(r0).gradientSum, false, 'a norm is a plain copy: its gradient is already whole');
  assert.deepEqual([norm(r0).inNorm, norm(r1).inNorm], [true, false]);
});

test('shardSpec: KV heads fewer than TP ranks are replicated, with their gradients summed over the replicas', () => {
  // Student: 2 query heads, 1 KV head, TP 2: both ranks hold the only KV head.
  const k = 'model.layers.0.self_attn.k_proj.weight';
  const v = 'model.layers.0.self_attn.v_proj.weight';
  for (const tp of [0, 1]) {
    const s = localParams(student, layout({ tp: 2 }), { tp, cp: 0, dp: 0, pp: 0 });
    for (const n of [k, v]) {
      const p = s.get(n)!;
      assert.deepEqual(p.slice, { axis: 0, ranges: [[0, 16]] }, `student rank ${tp} ${n}`);
      assert.equal(p.replicas, 2);
      assert.equal(p.gradientSum, true);
      assert.equal(p.inNorm, tp === 0);
    }
    assert.deepEqual(s.get('model.layers.0.self_attn.q_proj.weight')!.slice, { axis: 0, ranges: [[tp * 16, tp * 16 + 16]] });
  }
  // Teacher: 4 query heads, 2 KV heads, TP 4: ranks 0, 1 read KV head 0 and ranks 2, 3 KV head 1 (GQA groups of 2).
  const kv = range(4).map((tp) => localParams(teacher, layout({ tp: 4 }), { tp, cp: 0, dp: 0, pp: 0 }).get(k)!);
  assert.deepEqual(
    kv.map((p) => p.slice!.ranges),
    [[[0, 16]], [[0, 16]], [[16, 32]], [[16, 32]]],
  );
  assert.deepEqual(
    kv.map((p) => [p.replicas, p.gradientSum, p.inNorm]),
    [
      [2, true, true],
      [2, true, false],
      [2, true, true],
      [2, true, false],
    ],
  );
});

test('shardSpec: GPT-2 c_attn (Conv1D, out = [q | k | v]) gives each rank its heads of q, of k and of v', () => {
  const c = gpt2Config(); // n_embd 48, 4 heads of 12
  const s = range(2).map((tp) => localParams(c, layout({ tp: 2 }), { tp, cp: 0, dp: 0, pp: 0 }));
  const w = 'transformer.h.0.attn.c_attn.weight';
  assert.deepEqual(s[0].get(w)!.slice, {
    axis: 1,
    ranges: [
      [0, 24],
      [48, 72],
      [96, 120],
    ],
  });
  assert.deepEqual(s[1].get(w)!.slice, {
    axis: 1,
    ranges: [
      [24, 48],
      [72, 96],
      [120, 144],
    ],
  });
  assert.deepEqual(s[1].get('transformer.h.0.attn.c_attn.bias')!.slice, {
    axis: 0,
    ranges: [
      [24, 48],
      [72, 96],
      [120, 144],
    ],
  });
  assert.deepEqual(s[1].get('transformer.h.0.attn.c_proj.weight')!.slice, { axis: 0, ranges: [[24, 48]] });
  assert.equal(s[1].get('transformer.h.0.attn.c_proj.bias')!.slice, null, 'the row-parallel bias is added once, after the all-reduce');
  assert.deepEqual(s[1].get('transformer.h.0.mlp.c_fc.weight')!.slice, { axis: 1, ranges: [[96, 192]] });
  assert.deepEqual(s[1].get('transformer.h.0.mlp.c_fc.bias')!.slice, { axis: 0, ranges: [[96, 192]] });
  assert.deepEqual(s[1].get('transformer.h.0.mlp.c_proj.weight')!.slice, { axis: 0, ranges: [[96, 192]] });
  assert.equal(s[1].get('transformer.wpe.weight')!.slice, null);
  // A [2, 6] Conv1D-like weight, columns [q0 q1 | k0 k1 | v0 v1]: rank 1's columns are q1, k1, v1.
  const full = Float32Array.from(range(12));
  const slice = {
    axis: 1 as const,
    ranges: [
      [1, 2],
      [3, 4],
      [5, 6],
    ] as [number, number][],
  };
  assert.deepEqual([...sliceTensor(full, [2, 6], slice)], [1, 3, 5, 7, 9, 11]);
  const back = new Float32Array(12);
  placeSlice(back, [2, 6], slice, Float32Array.from([1, 3, 5, 7, 9, 11]));
  assert.deepEqual([...back], [0, 1, 0, 3, 0, 5, 0, 7, 0, 9, 0, 11]);
});

// ---- sequenceSplit.ts ----

test('sequenceSplit: rank r holds chunks r and 2cp − 1 − r; all ranks partition 0..T−1, uneven T too', () => {
  assert.deepEqual(positionsOf(16, 2, 0), [0, 1, 2, 3, 12, 13, 14, 15]);
  assert.deepEqual(positionsOf(16, 2, 1), [4, 5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual(positionsOf(17, 2, 0), [0, 1, 2, 3, 12, 13, 14, 15, 16]);
  assert.deepEqual(positionsOf(17, 2, 1), [4, 5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual(positionsOf(12, 3, 1), [2, 3, 8, 9]);
  assert.deepEqual(positionsOf(5, 1, 0), [0, 1, 2, 3, 4]);
  for (const T of [4, 5, 8, 16, 17, 31, 34, 100]) {
    for (const cp of [1, 2, 3, 4]) {
      if (T < 2 * cp) continue;
      const all = range(cp).map((r) => positionsOf(T, cp, r));
      assert.deepEqual(
        all.flat().sort((a, b) => a - b),
        range(T),
        `T ${T} cp ${cp}: every position exactly once`,
      );
      for (const p of all) {
        assert.deepEqual(
          p,
          [...p].sort((a, b) => a - b),
          `T ${T} cp ${cp}: a rank's positions are in order`,
        );
        assert.ok(Math.abs(p.length - T / cp) <= 2, `T ${T} cp ${cp}: ${p.length} positions`);
      }
      const s = range(cp).map((r) => sequenceSplit(T, cp, r));
      for (const [r, x] of s.entries()) {
        assert.deepEqual(x.local, all[r]);
        assert.deepEqual(x.keys, all.flat());
        assert.deepEqual(
          x.lengths,
          all.map((a) => a.length),
        );
        assert.deepEqual(x.keys.slice(x.offset, x.offset + x.local.length), x.local);
      }
      // Load balance: causal attention work Σ (p + 1) is equal on every rank when 2cp divides T.
      if (T % (2 * cp) === 0) {
        const work = all.map((p) => p.reduce((a, x) => a + x + 1, 0));
        assert.ok(
          work.every((w) => w === work[0]),
          `T ${T} cp ${cp}: attention work ${work}`,
        );
      }
    }
  }
});

test('takePositions picks the same positions out of every row', () => {
  const data = Int32Array.from(range(12)); // 2 rows of 6
  assert.deepEqual([...takePositions(data, 2, 6, [0, 4, 5])], [0, 4, 5, 6, 10, 11]);
  const f = takePositions(Float32Array.from(range(12)), 2, 6, [2]);
  assert.ok(f instanceof Float32Array);
  assert.deepEqual([...f], [2, 8]);
});

// ---- pipelineSchedule.ts ----

/** Runs every stage's schedule against the others: a forward needs the previous stage's, a backward the next's. */
function simulate(stages: number, micros: number): boolean {
  const programs = range(stages).map((s) => oneForwardOneBackward(s, stages, micros));
  const pc = programs.map(() => 0);
  const done = new Set<string>();
  const key = (s: number, a: ScheduleAction): string => `${s}:${a.kind}:${a.micro}`;
  for (;;) {
    let progressed = false;
    for (let s = 0; s < stages; s++) {
      while (pc[s] < programs[s].length) {
        const a = programs[s][pc[s]];
        const needs =
          a.kind === 'forward'
            ? s === 0 || done.has(`${s - 1}:forward:${a.micro}`)
            : done.has(`${s}:forward:${a.micro}`) && (s === stages - 1 || done.has(`${s + 1}:backward:${a.micro}`));
        if (!needs) break;
        done.add(key(s, a));
        pc[s]++;
        progressed = true;
      }
    }
    if (pc.every((p, s) => p === programs[s].length)) return true;
    if (!progressed) return false;
  }
}

test('1F1B: every micro-batch once forward and once backward, in order, at most pp − stage in flight, no deadlock', () => {
  assert.deepEqual(
    oneForwardOneBackward(0, 2, 3).map((a) => `${a.kind[0]}${a.micro}`),
    ['f0', 'f1', 'b0', 'f2', 'b1', 'b2'],
  );
  assert.deepEqual(
    oneForwardOneBackward(1, 2, 3).map((a) => `${a.kind[0]}${a.micro}`),
    ['f0', 'b0', 'f1', 'b1', 'f2', 'b2'],
  );
  assert.deepEqual(
    oneForwardOneBackward(0, 4, 2).map((a) => `${a.kind[0]}${a.micro}`),
    ['f0', 'f1', 'b0', 'b1'],
  );
  assert.equal(
    peakInFlight([
      { kind: 'forward', micro: 0 },
      { kind: 'forward', micro: 1 },
      { kind: 'backward', micro: 0 },
    ]),
    2,
  );
  for (let pp = 1; pp <= 4; pp++) {
    for (let micros = 1; micros <= 8; micros++) {
      for (let stage = 0; stage < pp; stage++) {
        const acts = oneForwardOneBackward(stage, pp, micros);
        const what = `stage ${stage} of ${pp}, ${micros} micro-batches`;
        assert.deepEqual(
          acts.filter((a) => a.kind === 'forward').map((a) => a.micro),
          range(micros),
          `${what}: forwards`,
        );
        assert.deepEqual(
          acts.filter((a) => a.kind === 'backward').map((a) => a.micro),
          range(micros),
          `${what}: backwards`,
        );
        for (const m of range(micros)) {
          const f = acts.findIndex((a) => a.kind === 'forward' && a.micro === m);
          const b = acts.findIndex((a) => a.kind === 'backward' && a.micro === m);
          assert.ok(f < b, `${what}: micro ${m} backward before its forward`);
        }
        const peak = peakInFlight(acts);
        assert.ok(peak <= pp - stage, `${what}: ${peak} in flight`);
        assert.equal(peak, Math.min(pp - stage, micros), `${what}: the warm-up fills the pipeline`);
      }
      assert.ok(simulate(pp, micros), `${pp} stages, ${micros} micro-batches: the stages deadlock`);
    }
  }
});

// ---- collectives.ts ----

test('Collectives over local transports: sum and max over a subgroup, identical on every member', async () => {
  const ts = localTransports(4);
  const colls = ts.map((t) => new Collectives(t));
  const group = [0, 2, 3];
  const inputs = new Map(group.map((r) => [r, Float32Array.from([r, -r - 1, r * r, 1.5, r === 2 ? 100 : -100])]));
  const sums = group.map((r) => inputs.get(r)!.slice());
  await Promise.all(group.map((r, i) => colls[r].allReduceSum(group, sums[i])));
  for (const s of sums) assert.deepEqual([...s], [5, -8, 13, 4.5, -100]);
  const maxes = await Promise.all(group.map((r) => colls[r].allReduceMax(group, inputs.get(r)!)));
  for (const m of maxes) assert.deepEqual([...m], [3, -1, 9, 1.5, 100]);
  // The inputs are not changed by the max.
  assert.deepEqual([...inputs.get(3)!], [3, -4, 9, 1.5, -100]);
  // A group of one is the identity.
  const alone = Float32Array.from([7]);
  await colls[1].allReduceSum([1], alone);
  assert.deepEqual([...alone], [7]);
  assert.deepEqual([...(await colls[1].allReduceMax([1], alone))], [7]);
});

test('Collectives: all-gather of uneven lengths, end to end in group order; a wrong length or a stranger is refused', async () => {
  const ts = localTransports(3);
  const colls = ts.map((t) => new Collectives(t));
  const lengths = [2, 0, 3];
  const mine = [Float32Array.from([1, 2]), new Float32Array(0), Float32Array.from([3, 4, 5])];
  // Group order [2, 0, 1], not rank order.
  const group = [2, 0, 1];
  const gl = group.map((r) => lengths[r]);
  const out = await Promise.all(group.map((r) => colls[r].allGather(group, mine[r], gl)));
  for (const o of out) assert.deepEqual([...o], [3, 4, 5, 1, 2]);
  await assert.rejects(colls[0].allGather([1, 2], mine[0], [0, 3]), /worker 0 is not in the group \[1, 2\]/);
  await assert.rejects(colls[0].allGather([0, 1], mine[0], [3, 0]), /contributes 2 values, the group expects 3/);
});

test('Collectives: reductions of two overlapping groups interleave correctly (TP then DP on a 2 × 2 layout)', async () => {
  const l = layout({ tp: 2, dp: 2 });
  const colls = localTransports(4).map((t) => new Collectives(t));
  const out = await Promise.all(
    range(4).map(async (r) => {
      const data = Float32Array.from([10 ** r, r]);
      for (let i = 0; i < 3; i++) {
        await colls[r].allReduceSum(groupOf(l, r, ['tp']), data);
        await colls[r].allReduceSum(groupOf(l, r, ['dp']), data);
        const t = tf.tensor1d(data);
        const s = await colls[r].allReduceTensor(groupOf(l, r, ['tp']), t);
        data.set(await s.data());
        t.dispose();
        s.dispose();
      }
      return data;
    }),
  );
  // Round 1: TP then DP sum the four ranks (1111, 0 + 1 + 2 + 3 = 6), the TP tensor reduction doubles that; each
  // later round multiplies by 2 · 2 · 2.
  for (const d of out) assert.deepEqual([...d], [1111 * 2 * 8 * 8, 6 * 2 * 8 * 8]);
});

test('Collectives: send/receive carries tensors between stages; a tag out of step throws', async () => {
  const before = tf.memory().numTensors;
  const [a, b] = localTransports(2).map((t) => new Collectives(t));
  const x = tf.tensor2d([
    [1, 2, 3],
    [4, 5, 6],
  ]);
  const ids = tf.tensor1d([7, 8], 'int32');
  await a.send(1, 'step 0 micro 0 forward', [x, ids]);
  const got = await b.receive(0, 'step 0 micro 0 forward');
  assert.equal(got.length, 2);
  assert.deepEqual(got[0].shape, [2, 3]);
  assert.deepEqual([...(await got[0].data())], [1, 2, 3, 4, 5, 6]);
  assert.equal(got[1].dtype, 'int32');
  assert.deepEqual([...(await got[1].data())], [7, 8]);
  await a.send(1, 'step 0 micro 1 forward', [x]);
  await assert.rejects(
    b.receive(0, 'step 0 micro 0 backward'),
    /pipeline out of step on worker 1: expected step 0 micro 0 backward from worker 0, got step 0 micro 1 forward/,
  );
  for (const t of [x, ids, ...got]) t.dispose();
  assert.equal(tf.memory().numTensors, before);
});
