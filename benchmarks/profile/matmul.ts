/**
 * The matmul paths side by side on webgpu: tfjs's fp32 kernel against the tensor-core kernel of
 * `--precision bf16-mixed` (f16 operands, f32 accumulation), on the shapes a config-M training step runs, with
 * the worst relative error of the mixed path against fp32 and its TFLOP/s.
 *
 *   node --import tsx benchmarks/profile/matmul.ts [--repeats 20]
 */
import * as tf from '@tensorflow/tfjs-core';
import { parseFlags } from '../../src/cli/flags.ts';
import { selectBackend } from '../../src/backend/select.ts';
import { setMatMulPrecision, takeMatMulCounts, type Precision } from '../../src/backend/webgpu/mixedPrecisionMatMul.ts';

const FLAGS = {
  repeats: { kind: 'int', help: 'timed matmuls per shape and path', default: 20, min: 1 },
} as const;

/** [label, a shape, b shape, transposeA, transposeB]: config M's forward and backward products. */
const SHAPES: [string, number[], number[], boolean, boolean][] = [
  ['student q/o proj x·Wᵀ', [4096, 768], [768, 768], false, true],
  ['student MLP up x·Wᵀ', [4096, 768], [2048, 768], false, true],
  ['student MLP down dY·W', [4096, 768], [768, 2048], false, false],
  ['teacher MLP up x·Wᵀ', [4096, 1536], [4096, 1536], false, true],
  ['weight grad dYᵀ·x', [4096, 2048], [4096, 768], true, false],
  ['head chunk h·Eᵀ', [512, 768], [32768, 768], false, true],
  ['attention q·kᵀ', [8, 12, 512, 64], [8, 12, 512, 64], false, true],
  ['attention p·v', [8, 12, 512, 512], [8, 12, 512, 64], false, false],
];

function flops(a: number[], b: number[], ta: boolean, tb: boolean): number {
  const r = a.length;
  const m = ta ? a[r - 1] : a[r - 2];
  const k = ta ? a[r - 2] : a[r - 1];
  const n = tb ? b[r - 2] : b[r - 1];
  return 2 * a.slice(0, r - 2).reduce((p, d) => p * d, 1) * m * n * k;
}

async function time(a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean, repeats: number): Promise<number> {
  for (let i = 0; i < 3; i++) tf.matMul(a, b, ta, tb).dispose();
  await tf.matMul(a, b, ta, tb).data();
  const t0 = performance.now();
  let last: tf.Tensor | null = null;
  for (let i = 0; i < repeats; i++) {
    last?.dispose();
    last = tf.matMul(a, b, ta, tb);
  }
  await last!.data();
  last!.dispose();
  return (performance.now() - t0) / repeats;
}

async function main(): Promise<void> {
  const { flags: f } = parseFlags(process.argv.slice(2), FLAGS, 'benchmarks/profile/matmul.ts');
  await selectBackend('webgpu', { log: (l) => console.log(l) });
  console.log(
    `${'shape'.padEnd(28)} ${'fp32 ms'.padStart(9)} ${'TFLOP/s'.padStart(8)} ${'mixed ms'.padStart(9)} ${'TFLOP/s'.padStart(8)} ${'speed-up'.padStart(8)}  worst rel. err (mixed vs fp32)`,
  );
  for (const [name, as, bs, ta, tb] of SHAPES) {
    let label = name;
    const a = tf.randomNormal(as);
    const b = tf.randomNormal(bs, 0, 0.02);
    const ms: Partial<Record<Precision, number>> = {};
    const out: Partial<Record<Precision, Float32Array>> = {};
    for (const p of ['32', 'bf16-mixed'] as Precision[]) {
      setMatMulPrecision(p);
      takeMatMulCounts();
      const y = tf.matMul(a, b, ta, tb);
      out[p] = (await y.data()) as Float32Array;
      y.dispose();
      const c = takeMatMulCounts();
      if (p !== '32' && c.tensorCore === 0) label += ' (fp32 kept)';
      ms[p] = await time(a, b, ta, tb, f.repeats!);
    }
    setMatMulPrecision('32');
    const ref = out['32']!;
    const mix = out['bf16-mixed']!;
    let scale = 0;
    for (const v of ref) scale = Math.max(scale, Math.abs(v));
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(mix[i] - ref[i]) / scale);
    const fl = flops(as, bs, ta, tb);
    const tfl = (t: number): string => (fl / t / 1e9).toFixed(1).padStart(8);
    const [fp32, mixedMs] = [ms['32']!, ms['bf16-mixed']!];
    console.log(
      `${label.padEnd(28)} ${fp32.toFixed(3).padStart(9)} ${tfl(fp32)} ${mixedMs.toFixed(3).padStart(9)} ${tfl(mixedMs)} ${(fp32 / mixedMs).toFixed(2).padStart(7)}×  ${worst.toExponential(2)}`,
    );
    a.dispose();
    b.dispose();
  }
}

await main();
