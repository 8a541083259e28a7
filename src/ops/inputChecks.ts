/**
 * What the ops check before choosing a kernel or a composition: inputs that neither could work on are refused
 * with the op, the tensor and what it must be, rather than failing later inside a kernel or a broadcast.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { DistillError } from '../errors.ts';

/** An op was given tensors it cannot work on: the message names the op, the tensor and what it must be. */
export class OpInputError extends DistillError {}

/** Throws unless `p` (a normalisation's weight or bias) is a [hidden] vector for x [..., hidden]. */
export function checkRowParameter(op: string, x: tf.Tensor, name: string, p: tf.Tensor): void {
  const hidden = x.shape[x.rank - 1];
  if (x.rank < 1 || p.rank !== 1 || p.shape[0] !== hidden) {
    throw new OpInputError(`${op}: ${name} [${p.shape}] must be [${hidden}], the last axis of x [${x.shape}]; pass the layer's own ${name}`);
  }
}
