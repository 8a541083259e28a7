/**
 * `distill init --config config.json --out DIR [--seed N]`: a freshly initialised checkpoint in the Hugging Face
 * layout, the starting point for pretraining a teacher or for a student trained from scratch.
 */
import { readFileSync } from 'node:fs';
import { parseFlags, required, usage } from './flags.ts';
import { selectBackend } from '../backend/select.ts';
import { parseModelConfig } from '../model/config.ts';
import { createModel } from '../model/create.ts';
import { initialWeights } from '../model/initWeights.ts';
import { saveModel } from '../checkpoint/save.ts';
import { FormatError } from '../errors.ts';

const FLAGS = {
  config: { kind: 'string', help: 'a Hugging Face config.json (GPT-2 or Llama family)' },
  out: { kind: 'string', help: 'directory to write config.json + model.safetensors to' },
  seed: { kind: 'int', help: 'seed of the initialisation', default: 1234 },
  help: { kind: 'boolean', help: 'print this help' },
} as const;

export async function initModelDir(configPath: string, out: string, seed: number): Promise<void> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(configPath, 'utf8'));
  } catch (e) {
    throw new FormatError(configPath, `cannot read a JSON config: ${(e as Error).message}`);
  }
  const config = parseModelConfig(json, configPath);
  const model = createModel(config, initialWeights(config, seed), { trainable: false });
  try {
    await saveModel(model, out, { dtype: 'float32' });
  } finally {
    model.dispose();
  }
}

export async function initMain(argv: string[]): Promise<void> {
  const { flags: f } = parseFlags(argv, FLAGS, 'distill init');
  if (f.help) return void console.log(usage('distill init', 'Write a freshly initialised checkpoint.', FLAGS));
  await selectBackend('cpu', { log: null });
  await initModelDir(required('distill init', 'config', f.config), required('distill init', 'out', f.out), f.seed!);
  console.log(`wrote ${f.out}`);
}
