/**
 * The distillation goldens as tensors: teacher and student logits [2·17, 1000], the input ids [2, 17] and the kd
 * mask, read in place from ../shared/fixtures (see its README).
 */
import * as tf from '@tensorflow/tfjs-core';
import { readAllSafetensors, type HostTensor } from '../../src/io/safetensors.ts';
import { fixture } from '../helpers/fixtures.ts';

export interface LossFixture {
  teacher: HostTensor;
  student: HostTensor;
  inputIds: HostTensor;
  mask: HostTensor;
}

let cached: LossFixture | null = null;

export function lossFixture(): LossFixture {
  if (cached) return cached;
  const t = readAllSafetensors(fixture('llama-teacher', 'expected.safetensors'));
  const s = readAllSafetensors(fixture('llama-student', 'expected.safetensors'));
  const m = readAllSafetensors(fixture('kd_mask.safetensors'));
  const first = (map: Map<string, HostTensor>, name: string): HostTensor => {
    const v = map.get(name) ?? [...map.values()][0];
    if (!v) throw new Error(`fixture has no tensor ${name}`);
    return v;
  };
  cached = { teacher: first(t, 'logits'), student: first(s, 'logits'), inputIds: first(s, 'input_ids'), mask: first(m, 'mask') };
  return cached;
}

/** Logits as [B·S, V]. */
export function logits2d(h: HostTensor): tf.Tensor2D {
  const [b, s, v] = h.shape;
  return tf.tensor2d(h.data as Float32Array, [b * s, v]);
}
export function asTensor<R extends tf.Rank>(h: HostTensor): tf.Tensor<R> {
  return tf.tensor<tf.Rank>(h.data, h.shape, h.dtype) as tf.Tensor<R>;
}
