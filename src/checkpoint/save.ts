/**
 * Writes a CausalLM as a Hugging Face checkpoint directory that `transformers` loads as it stands:
 * `config.json` (the original fields, dtype updated) and `model.safetensors` with `__metadata__ {format: "pt"}`
 * (transformers refuses safetensors without it), tensors under their HF names, a tied lm_head left out.
 * The directory is replaced atomically: a crash leaves the old checkpoint or the new one, never a mix.
 */
import { join } from 'node:path';
import { writeDirAtomic, writeFileAtomic } from '../io/atomicWrite.ts';
import { encodeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import type { CausalLM } from '../model/causalLM.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from './load.ts';

export { hashModelFiles } from './hash.ts';

export interface SaveOptions {
  /** bfloat16 halves the file and matches what most released checkpoints use; rounding is to nearest even. */
  dtype: 'float32' | 'bfloat16';
}

/** The config as transformers should read it back: every original field, the dtype of the written weights. */
export function configForSave(raw: Record<string, unknown>, dtype: SaveOptions['dtype']): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw };
  // transformers 5 writes `dtype`, 4.x `torch_dtype`; keep whichever the file had, both when it had neither.
  const keys = ['dtype', 'torch_dtype'].filter((k) => k in raw);
  for (const k of keys.length > 0 ? keys : ['dtype', 'torch_dtype']) out[k] = dtype;
  return out;
}

/**
 * What saving needs of a model: its config and named tensors that can be read back. A CausalLM is one; so are the
 * full tensors that model-parallel ranks gather on rank 0 (src/parallel/modelParallel/shardedWeights.ts).
 */
export interface SavableModel {
  config: Pick<CausalLM['config'], 'raw'>;
  params: Map<string, { shape: number[]; data(): Promise<ArrayLike<number>> }>;
}

/** Saves `model` under `dir`, replacing what was there. */
export async function saveModel(model: SavableModel, dir: string, opts: SaveOptions): Promise<void> {
  const tensors: TensorToWrite[] = [];
  for (const [name, v] of model.params) {
    // Async read: a webgpu variable cannot be read synchronously in Node.
    const data = (await v.data()) as Float32Array;
    tensors.push({ name, dtype: opts.dtype === 'bfloat16' ? 'BF16' : 'F32', shape: v.shape, data });
  }
  const bytes = encodeSafetensors(tensors, { format: 'pt' });
  const config = JSON.stringify(configForSave(model.config.raw, opts.dtype), null, 2) + '\n';
  writeDirAtomic(dir, (tmp) => {
    // Each file is fsynced before the directory is renamed into place.
    writeFileAtomic(join(tmp, CONFIG_FILE), config);
    writeFileAtomic(join(tmp, WEIGHTS_FILE), bytes);
  });
}
