/**
 * Where one training micro-batch's time goes, per kernel and on the host (issue: "find out first, with a profile
 * per stage and per kernel"): the student's forward, the chunked KD loss against a teacher's hidden states,
 * the backward and AdamW, for a benchmark configuration's shapes, on one backend.
 *
 *   node --import tsx benchmarks/profile/kernels.ts --config M --backend webgpu [--batch 4] [--host_profile]
 *
 * Prints the wall time per micro-batch, the kernels tfjs ran with their summed device time (webgpu: Dawn's
 * timestamp queries; wasm/cpu: host time) by kernel and by shape, and with --host_profile the host functions that
 * took the most time over five micro-batches (V8's sampling profiler): on webgpu the gap between wall time and
 * kernel time is the host's per-op cost.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import * as tf from '@tensorflow/tfjs-core';
import { parseFlags } from '../../src/cli/flags.ts';
import { selectBackend, type BackendChoice } from '../../src/backend/select.ts';
import { PRECISIONS, type Precision } from '../../src/backend/webgpu/mixedPrecisionMatMul.ts';
import { kdLossFromHidden } from '../../src/losses/chunkedKd.ts';
import { DEFAULT_KD_LOSS } from '../../src/losses/types.ts';
import { AdamW, NEMO_ADAMW_DEFAULTS } from '../../src/optim/adamw.ts';
import { benchShape } from '../configs.ts';
import { buildModel } from '../ours.ts';

const FLAGS = {
  config: { kind: 'string', help: 'benchmark configuration (benchmarks/configs.json)', default: 'M' },
  backend: { kind: 'string', help: 'tfjs backend', default: 'webgpu' },
  batch: { kind: 'int', help: 'rows per micro-batch', default: 4, min: 1 },
  chunk: { kind: 'int', help: 'loss chunk (token positions)', default: 512, min: 1 },
  host_profile: { kind: 'boolean', help: 'also sample the host with V8 profiler' },
  host_profile_file: { kind: 'string', help: "with --host_profile, also write V8's profile here (.cpuprofile: Chrome DevTools opens it)" },
  precision: { kind: 'string', help: 'matmul precision (32, bf16-mixed)', default: '32', choices: PRECISIONS },
} as const;

interface Agg {
  ms: number;
  count: number;
}

function top(m: Map<string, Agg>, n: number): string {
  return [...m]
    .sort((a, b) => b[1].ms - a[1].ms)
    .slice(0, n)
    .map(([k, v]) => `${v.ms.toFixed(2).padStart(10)} ms  x${String(v.count).padEnd(5)} ${k}`)
    .join('\n');
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

async function main(): Promise<void> {
  const { flags: f } = parseFlags(process.argv.slice(2), FLAGS, 'benchmarks/profile/kernels.ts');
  await selectBackend(f.backend as BackendChoice, { log: (l) => console.log(l), precision: f.precision as Precision });
  const shape = benchShape(f.config!);
  const student = buildModel(shape, 'student', 1);
  const teacher = buildModel(shape, 'teacher', 2);
  const B = f.batch!;
  const S = shape.seq;
  const ids = tf.randomUniformInt([B, S], 0, shape.vocab) as tf.Tensor2D;
  const mask = tf.ones([B * S]) as tf.Tensor1D;
  const optimizer = new AdamW(student.params, NEMO_ADAMW_DEFAULTS);
  const teacherHidden = tf.tidy(() => tf.reshape(teacher.hidden(ids), [B * S, -1]) as tf.Tensor2D);
  const names = new Map([...student.params].map(([n, v]) => [v.name, n]));
  const microBatch = async (): Promise<void> => {
    const { value, grads } = tf.variableGrads(() => {
      const h = tf.reshape(student.hidden(ids), [B * S, -1]) as tf.Tensor2D;
      return kdLossFromHidden({
        studentHidden: h,
        studentHead: student.headWeight(),
        teacherHidden,
        teacherHead: teacher.headWeight(),
        teacherHeadTransposed: teacher.frozenHeadTransposed() ?? undefined,
        mask,
        options: DEFAULT_KD_LOSS,
        chunkSize: f.chunk!,
      }).loss;
    }, student.trainableVariables());
    const g = new Map(Object.entries(grads).map(([k, v]) => [names.get(k) ?? k, v]));
    optimizer.apply(g, 1e-4);
    await value.data();
    value.dispose();
    for (const t of g.values()) t.dispose();
  };
  for (let i = 0; i < 3; i++) await microBatch();
  const t0 = performance.now();
  for (let i = 0; i < 5; i++) await microBatch();
  console.log(
    `config ${f.config}, ${B} × ${S} tokens: ${((performance.now() - t0) / 5).toFixed(1)} ms per micro-batch (student forward, KD loss, backward, AdamW), wall`,
  );

  const prof = await tf.profile(async () => {
    await microBatch();
  });
  const byKernel = new Map<string, Agg>();
  const byShape = new Map<string, Agg>();
  let total = 0;
  for (const k of prof.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    total += ms;
    for (const [map, key] of [
      [byKernel, k.name],
      [byShape, `${k.name} ${JSON.stringify(k.inputShapes)}`],
    ] as const) {
      const a = map.get(key) ?? { ms: 0, count: 0 };
      a.ms += ms;
      a.count++;
      map.set(key, a);
    }
  }
  console.log(
    `\n${prof.kernels.length} kernels, ${total.toFixed(1)} ms summed kernel time\n\nby kernel:\n${top(byKernel, 20)}\n\nby kernel and input shapes:\n${top(byShape, 20)}`,
  );

  if (f.host_profile) {
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    for (let i = 0; i < 5; i++) await microBatch();
    const { profile } = await session.post('Profiler.stop');
    if (f.host_profile_file) writeFileSync(f.host_profile_file, JSON.stringify(profile));
    const nodes = new Map((profile.nodes as ProfileNode[]).map((n) => [n.id, n]));
    const self = new Map<string, Agg>();
    profile.samples?.forEach((id, i) => {
      const cf = nodes.get(id)!.callFrame;
      const key = `${cf.functionName || '(native or anonymous)'} ${cf.url.split('/').slice(-2).join('/')}${cf.url ? `:${cf.lineNumber}` : ''}`;
      const a = self.get(key) ?? { ms: 0, count: 0 };
      a.ms += (profile.timeDeltas?.[i] ?? 0) / 1000 / 5;
      a.count++;
      self.set(key, a);
    });
    console.log(`\nhost, self time per micro-batch (V8 samples; "native" includes Dawn's WebGPU calls):\n${top(self, 25)}`);
    session.disconnect();
  }
  optimizer.dispose();
  student.dispose();
  teacher.dispose();
}

await main();
