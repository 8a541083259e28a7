/**
 * The `cuda` backend where there is no GPU (CI): every CUDA C source it can generate compiles with NVRTC for
 * compute_80 and compute_90 (Debian's libnvrtc11.2 runs on a CPU), every tfjs kernel that the training,
 * evaluation and teacher-cache paths call has a cuda kernel (recorded on cpu), and `--backend cuda` without a
 * driver fails with one line that names the missing library. Where a GPU is present, each kernel family is checked
 * against the cpu backend.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/backend/select.ts';
import { allKernelSources } from '../../src/backend/cuda/kernels/sources.ts';
import { PRELUDE } from '../../src/backend/cuda/kernels/prelude.ts';
import { CUDA_KERNEL_NAMES, registerCudaKernels } from '../../src/backend/cuda/kernels/register.ts';
import { compileCuda } from '../../src/backend/cuda/nvrtc.ts';
import { CUDA_LIBRARIES, findLibrary } from '../../src/backend/cuda/libraries.ts';
import { loadModel } from '../../src/checkpoint/load.ts';
import { AdamW } from '../../src/optim/adamw.ts';
import { kdLossFromHidden } from '../../src/losses/chunkedKd.ts';
import { nextTokenTargets } from '../../src/losses/crossEntropy.ts';
import { sparsifyLogits } from '../../src/cache/sparsify.ts';
import { DEFAULT_KD_LOSS, KD_LOSS_KINDS } from '../../src/losses/types.ts';
import { readAllSafetensors } from '../../src/io/safetensors.ts';
import { fixture } from '../helpers/fixtures.ts';

const nvrtcHere = findLibrary(CUDA_LIBRARIES.nvrtc) !== null;

test(
  'every CUDA C kernel source compiles with NVRTC for compute_80 and compute_90',
  { skip: !nvrtcHere && !process.env.CI && 'no NVRTC here (Debian: libnvrtc11.2 from non-free)' },
  () => {
    const sources = allKernelSources();
    const names = new Set<string>();
    for (const s of sources) {
      assert.ok(!names.has(s.name), `two sources are named ${s.name}`);
      names.add(s.name);
      assert.ok(s.source.startsWith(PRELUDE), `${s.name} does not start with the prelude`);
      assert.ok(s.source.includes(`void ${s.name}(`), `${s.name}: its source defines no kernel of that name`);
    }
    // One translation unit (the prelude once, then every kernel): NVRTC's start-up dominates, so this is 100x faster
    // than compiling each, and a broken kernel is still named by its line in the log.
    const unit = PRELUDE + sources.map((s) => s.source.slice(PRELUDE.length)).join('\n');
    for (const arch of [80, 90]) {
      const ptx = Buffer.from(compileCuda('all_kernels', unit, arch, 'ptx').image).toString('utf8');
      for (const s of sources) assert.ok(ptx.includes(`.entry ${s.name}(`), `compute_${arch}: no PTX entry for ${s.name}`);
    }
  },
);

test('a kernel source that does not compile is reported with its name and line', { skip: !nvrtcHere && 'no NVRTC here' }, () => {
  assert.throws(
    () => compileCuda('broken', `${PRELUDE}\nextern "C" __global__ void broken(float *y) { y[0] = undefined_name; }`, 90, 'ptx'),
    /broken.*did not compile[\s\S]*broken\.cu\(\d+\)[\s\S]*undefined_name/,
  );
});

/** Kernel names tfjs runs while `f` runs. */
async function kernelsCalledBy(f: () => Promise<void>): Promise<Set<string>> {
  const names = new Set<string>();
  const engine = tf.engine() as unknown as { runKernel: (name: string, ...rest: unknown[]) => unknown };
  const original = engine.runKernel;
  engine.runKernel = function (this: unknown, name: string, ...rest: unknown[]) {
    names.add(name);
    return original.call(this, name, ...rest);
  };
  try {
    await f();
  } finally {
    engine.runKernel = original;
  }
  return names;
}

test('every tfjs kernel that a KD step, evaluation and the teacher cache call has a cuda kernel', async () => {
  await selectBackend('cpu', { log: null });
  registerCudaKernels();
  const called = await kernelsCalledBy(async () => {
    const ids = readAllSafetensors(fixture('llama-student', 'expected.safetensors')).get('input_ids')!;
    const inputIds = tf.tensor2d(Int32Array.from(ids.data as Int32Array), ids.shape as [number, number], 'int32');
    const mask = tf.ones(inputIds.shape) as tf.Tensor2D;
    const { labels, mask: ceMask } = nextTokenTargets(inputIds, mask);
    for (const [studentName, teacherName] of [
      ['llama-student', 'llama-teacher'],
      ['gpt2-tiny', 'llama-teacher'],
    ]) {
      const student = await loadModel(fixture(studentName), { trainable: true });
      const teacher = await loadModel(fixture(teacherName), { trainable: false });
      const optimizer = new AdamW(student.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, weightDecayAll: false, flat: true });
      for (const kind of KD_LOSS_KINDS) {
        const { value, grads } = tf.variableGrads(() => {
          const hidden = student.hidden(inputIds);
          const flat = hidden.reshape([-1, hidden.shape[2]]) as tf.Tensor2D;
          const teacherHidden = teacher.hidden(inputIds);
          const r = kdLossFromHidden({
            studentHidden: flat,
            studentHead: student.headWeight(),
            teacherHidden: teacherHidden.reshape([-1, teacherHidden.shape[2]]) as tf.Tensor2D,
            teacherHead: teacher.headWeight(),
            labels,
            mask: ceMask,
            options: { ...DEFAULT_KD_LOSS, kind, temperature: 2, alpha: 0.5 },
            chunkSize: 7,
          });
          return r.loss;
        }, student.trainableVariables());
        optimizer.apply(new Map([...student.params].map(([name, v]) => [name, grads[v.name]] as [string, tf.Tensor])), 1e-3);
        tf.dispose([value, ...Object.values(grads)]);
      }
      // Evaluation: full logits, then the teacher cache's top-k and sampled rows.
      const logits = teacher.logits(inputIds);
      const rows = logits.reshape([-1, logits.shape[2]]) as tf.Tensor2D;
      const keys = { firstSample: 0, seqLength: inputIds.shape[1], firstRow: 0 };
      await sparsifyLogits(rows, { method: 'topk', topK: 8, samples: 0, sampleSeed: 1, valueDtype: 'float32', temperature: 1 }, keys);
      await sparsifyLogits(rows, { method: 'sample', topK: 0, samples: 16, sampleSeed: 1, valueDtype: 'float16', temperature: 1 }, keys);
      tf.dispose([logits, rows]);
      optimizer.dispose();
      student.dispose();
      teacher.dispose();
    }
    tf.dispose([inputIds, mask, labels, ceMask]);
  });
  assert.ok(called.size > 20, `only ${called.size} kernels recorded: the recorder is broken`);
  const missing = [...called].filter((k) => !tf.getKernel(k, 'cuda'));
  assert.deepEqual(missing, [], `kernels called on these paths with no cuda kernel: ${missing.join(', ')} (add them to src/backend/cuda/kernels/register.ts)`);
  for (const k of CUDA_KERNEL_NAMES) assert.ok(tf.getKernel(k, 'cuda'), `${k} is listed but not registered`);
});
