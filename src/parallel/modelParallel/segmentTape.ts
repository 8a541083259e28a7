/**
 * Back-propagation across communication. tfjs differentiates synchronous functions only, while a tensor- or
 * context-parallel layer must all-reduce (or gather) in the middle of its forward and backward passes, and a
 * pipeline stage must wait for the next stage's gradient. So a model-parallel forward pass is a list of ops over
 * named activations: compute ops (plain tfjs, differentiated by tfjs) and collective ops (async, with a
 * hand-written backward, as Megatron's autograd functions `_ReduceFromModelParallelRegion` and friends).
 *
 * The forward keeps every op's inputs; the backward walks the ops in reverse and runs each compute op's vector-
 * Jacobian product with `tf.grads`, which recomputes that op's forward (activation recomputation, op by op: the
 * price of a tape that can stop at every collective).
 */
import * as tf from '@tensorflow/tfjs-core';

export interface OpGradients {
  /** One per input: null where the input takes no gradient (ids, positions, constants). */
  dInputs: (tf.Tensor | null)[];
  /** One per parameter. */
  dParams: tf.Tensor[];
}

export interface Op {
  label: string;
  inputs: string[];
  outputs: string[];
  /** Parameter names (the rank's local parameters). */
  params: string[];
  forward(inputs: tf.Tensor[], params: tf.Tensor[]): Promise<tf.Tensor[]>;
  /** dOutputs: null where an output received no gradient. */
  backward(inputs: tf.Tensor[], params: tf.Tensor[], dOutputs: (tf.Tensor | null)[]): Promise<OpGradients>;
}

/**
 * An op computed by a synchronous tfjs function of its inputs and parameters. `differentiable` marks the inputs
 * that take a gradient (float activations); the others are held constant.
 */
export function computeOp(
  label: string,
  io: { inputs: string[]; outputs: string[]; params?: string[]; differentiable?: boolean[] },
  fn: (inputs: tf.Tensor[], params: tf.Tensor[]) => tf.Tensor[],
): Op {
  const params = io.params ?? [];
  const diff = io.differentiable ?? io.inputs.map(() => true);
  return {
    label,
    inputs: io.inputs,
    outputs: io.outputs,
    params,
    forward: async (inputs, ps) => tf.tidy(() => fn(inputs, ps)),
    backward: async (inputs, ps, dOutputs) => {
      const wrt = [...inputs.filter((_, i) => diff[i]), ...ps];
      const grads = tf.tidy(() => {
        const f = (...xs: tf.Tensor[]): tf.Scalar => {
          let k = 0;
          const ins = inputs.map((x, i) => (diff[i] ? xs[k++] : x));
          const outs = fn(ins, xs.slice(k));
          // Σ out·dy: its gradient is the vector-Jacobian product. An output without a gradient counts with dy = 0,
          // which keeps every input on the path (tf.grads refuses an input that reaches no output).
          let total: tf.Scalar = tf.scalar(0);
          outs.forEach((o, i) => {
            const dy = dOutputs[i];
            total = tf.add(total, tf.sum(tf.mul(o, dy ?? tf.zerosLike(o))));
          });
          return total;
        };
        return wrt.length ? tf.grads(f)(wrt) : [];
      });
      let k = 0;
      const dInputs = inputs.map((_, i) => (diff[i] ? grads[k++] : null));
      return { dInputs, dParams: grads.slice(k) };
    },
  };
}

/** An op with one input and one output whose forward and backward are given (a collective). */
export function collectiveOp(
  label: string,
  input: string,
  output: string,
  forward: (x: tf.Tensor) => Promise<tf.Tensor>,
  backward: (dy: tf.Tensor) => Promise<tf.Tensor>,
): Op {
  return {
    label,
    inputs: [input],
    outputs: [output],
    params: [],
    forward: async ([x]) => [await forward(x)],
    backward: async (_inputs, _params, [dy]) => ({ dInputs: [dy ? await backward(dy) : null], dParams: [] }),
  };
}

/** The activations of one micro-batch's forward pass through a list of ops, kept for its backward. */
export class Tape {
  readonly acts = new Map<string, tf.Tensor>();

  constructor(
    private readonly ops: Op[],
    private readonly params: Map<string, tf.Tensor>,
  ) {}

  private param(name: string, op: Op): tf.Tensor {
    const p = this.params.get(name);
    if (!p) throw new Error(`op ${op.label}: this rank holds no parameter ${name}`);
    return p;
  }

  private act(name: string, op: Op): tf.Tensor {
    const a = this.acts.get(name);
    if (!a) throw new Error(`op ${op.label}: no activation "${name}" (ops out of order?)`);
    return a;
  }

  /** Runs the ops; `given` are the inputs from outside (ids, the previous stage's activations). */
  async forward(given: Record<string, tf.Tensor>): Promise<void> {
    for (const [k, v] of Object.entries(given)) this.acts.set(k, v);
    for (const op of this.ops) {
      const outs = await op.forward(
        op.inputs.map((n) => this.act(n, op)),
        op.params.map((n) => this.param(n, op)),
      );
      op.outputs.forEach((n, i) => this.acts.set(n, outs[i]));
    }
  }

  /**
   * Back-propagates from `seeds` (activation name → its gradient, owned by the tape from now on), adding each
   * parameter's gradient into `paramGrads`. Returns the gradients of the tape's given inputs named in `wanted`.
   */
  async backward(seeds: Record<string, tf.Tensor>, paramGrads: Map<string, tf.Tensor>, wanted: string[] = []): Promise<Map<string, tf.Tensor>> {
    const grads = new Map<string, tf.Tensor>(Object.entries(seeds));
    const addInto = (into: Map<string, tf.Tensor>, name: string, g: tf.Tensor): void => {
      const prev = into.get(name);
      if (prev) {
        into.set(name, tf.add(prev, g));
        prev.dispose();
        g.dispose();
      } else {
        into.set(name, g);
      }
    };
    for (let i = this.ops.length - 1; i >= 0; i--) {
      const op = this.ops[i];
      const dOuts = op.outputs.map((n) => grads.get(n) ?? null);
      if (dOuts.every((d) => d === null)) continue;
      const r = await op.backward(
        op.inputs.map((n) => this.act(n, op)),
        op.params.map((n) => this.param(n, op)),
        dOuts,
      );
      op.outputs.forEach((n) => grads.delete(n));
      for (const d of dOuts) d?.dispose();
      op.inputs.forEach((n, k) => {
        const d = r.dInputs[k];
        if (d) addInto(grads, n, d);
      });
      op.params.forEach((n, k) => addInto(paramGrads, n, r.dParams[k]));
    }
    const out = new Map<string, tf.Tensor>();
    for (const [n, g] of grads) {
      if (wanted.includes(n)) out.set(n, g);
      else g.dispose();
    }
    return out;
  }

  /** Disposes the activations (the given inputs too). */
  dispose(): void {
    for (const t of new Set(this.acts.values())) t.dispose();
    this.acts.clear();
  }
}
