/**
 * `distill infer --model DIR --ids IN.safetensors --out OUT.safetensors [--backend B]`: the logits of a checkpoint
 * for given token ids, written as safetensors so that they can be compared with transformers' output in a line of
 * Python. It is the check that a model loads and computes what the reference computes, on this machine's backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BACKEND_CHOICES, selectBackend, type BackendChoice } from '../backend/select.ts';
import { loadModel } from '../checkpoint/load.ts';
import { FormatError } from '../errors.ts';
import { readAllSafetensors, writeSafetensors } from '../io/safetensors.ts';
import { parseFlags, required, usage, type FlagSpecs } from './flags.ts';

const COMMAND = 'distill infer';

const FLAGS = {
  model: { kind: 'string', help: 'checkpoint directory (config.json + model.safetensors)' },
  ids: { kind: 'string', help: 'safetensors file with tensor input_ids, int32 or int64 [batch, seq]' },
  out: { kind: 'string', help: 'output safetensors file; gets tensor logits, float32 [batch, seq, vocab]' },
  backend: { kind: 'string', help: 'tfjs backend', default: 'auto', choices: BACKEND_CHOICES },
  help: { kind: 'boolean', help: 'print this help' },
} satisfies FlagSpecs;

export async function inferMain(argv: string[]): Promise<void> {
  const { flags } = parseFlags(argv, FLAGS, COMMAND);
  if (flags.help) {
    process.stdout.write(usage(COMMAND, 'Writes the logits of a checkpoint for the given token ids.', FLAGS) + '\n');
    return;
  }
  const modelDir = required(COMMAND, 'model', flags.model);
  const idsPath = required(COMMAND, 'ids', flags.ids);
  const outPath = required(COMMAND, 'out', flags.out);

  // Read the input before starting a backend or loading weights: a wrong file should fail in a second.
  const inputs = readAllSafetensors(idsPath);
  const ids = inputs.get('input_ids');
  if (!ids) throw new FormatError(idsPath, `no tensor "input_ids" (it holds: ${[...inputs.keys()].join(', ') || 'nothing'})`);
  if (ids.dtype !== 'int32' || ids.shape.length !== 2) {
    throw new FormatError(idsPath, `tensor "input_ids" must be an integer tensor [batch, seq], got ${ids.dtype} [${ids.shape}]`);
  }

  await selectBackend(flags.backend as BackendChoice);
  const model = await loadModel(modelDir, { trainable: false });
  const idsT = tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32');
  try {
    const logits = model.logits(idsT);
    const data = (await logits.data()) as Float32Array;
    const shape = logits.shape;
    logits.dispose();
    writeSafetensors(outPath, [{ name: 'logits', dtype: 'F32', shape, data }], { format: 'pt' });
  } finally {
    idsT.dispose();
    model.dispose();
  }
}
