/**
 * Loads a Hugging Face checkpoint directory (`config.json` + `model.safetensors`, or a sharded
 * `model.safetensors.index.json`) into a CausalLM on the current backend.
 *
 * The file is checked against the config before any tensor is read: every expected tensor present with exactly the
 * config's shape, nothing unexpected. A checkpoint that loads "mostly" would train a half-random student for days.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError, FormatError } from '../errors.ts';
import { SafetensorsReader, type TensorEntry } from '../io/safetensors.ts';
import type { ModelOptions } from '../model/base.ts';
import type { CausalLM } from '../model/causalLM.ts';
import { parseModelConfig, type ModelConfig } from '../model/config.ts';
import { createModel } from '../model/create.ts';
import { expectedParamShapes, isIgnorableTensor, trunkPrefix } from '../model/params.ts';

/** Trainable or not (a teacher), and what a student's backward recomputes. */
export type LoadOptions = ModelOptions;

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16', 'F64']);
const PICKLED = /^(pytorch_model.*\.bin|.*\.pt|.*\.pth|.*\.ckpt|pytorch_model\.bin\.index\.json)$/;

/** Reads and normalises `dir/config.json`. */
export function readModelConfig(dir: string): ModelConfig {
  const file = join(dir, CONFIG_FILE);
  if (!existsSync(file)) {
    throw new CheckpointError(
      `${dir}: no ${CONFIG_FILE}; a Hugging Face checkpoint directory holds config.json and model.safetensors (as save_pretrained writes them)`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(file, `is not valid JSON: ${(e as Error).message}`);
  }
  return parseModelConfig(json, file);
}

function conversionHint(dir: string): string {
  return `convert it to safetensors with: python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('${dir}').save_pretrained('OUT', safe_serialization=True)"`;
}

/** Where each tensor of the checkpoint lives: its reader and header entry. */
interface Located {
  reader: SafetensorsReader;
  entry: TensorEntry;
}

/** Opens the weight file(s) and maps every tensor name to its location; the caller closes the readers. */
function openWeights(dir: string, readers: SafetensorsReader[]): Map<string, Located> {
  const located = new Map<string, Located>();
  const indexPath = join(dir, INDEX_FILE);
  const single = join(dir, WEIGHTS_FILE);
  const add = (reader: SafetensorsReader): void => {
    readers.push(reader);
    for (const e of reader.entries.values()) {
      const prev = located.get(e.name);
      if (prev) throw new CheckpointError(`tensor "${e.name}" is in both ${prev.reader.path} and ${reader.path}`);
      located.set(e.name, { reader, entry: e });
    }
  };
  if (existsSync(single)) {
    add(SafetensorsReader.open(single));
    return located;
  }
  if (existsSync(indexPath)) {
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(indexPath, 'utf8'));
    } catch (e) {
      throw new FormatError(indexPath, `is not valid JSON: ${(e as Error).message}`);
    }
    const map = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) {
      throw new FormatError(indexPath, 'has no "weight_map" object (tensor name → shard file)');
    }
    const wm = map as Record<string, unknown>;
    const shards = [...new Set(Object.values(wm))];
    for (const s of shards) {
      if (typeof s !== 'string' || s.includes('/') || s.includes('\\') || s.startsWith('.')) {
        throw new FormatError(indexPath, `weight_map names shard ${JSON.stringify(s)}, not a plain file name in the checkpoint directory`);
      }
      add(SafetensorsReader.open(join(dir, s)));
    }
    for (const [name, shard] of Object.entries(wm)) {
      const at = located.get(name);
      if (!at || at.reader.path !== join(dir, shard as string)) {
        throw new CheckpointError(`${indexPath}: weight_map puts "${name}" in ${String(shard)}, but that shard does not hold it`);
      }
    }
    return located;
  }
  const pickled = existsSync(dir) && statSync(dir).isDirectory() ? readdirSync(dir).filter((n) => PICKLED.test(n)) : [];
  if (pickled.length > 0) {
    throw new CheckpointError(
      `${dir}: holds pickled PyTorch weights (${pickled.join(', ')}), which this project does not read (unpickling runs code); ${conversionHint(dir)}`,
    );
  }
  throw new CheckpointError(`${dir}: no ${WEIGHTS_FILE} or ${INDEX_FILE}; save the model with save_pretrained(..., safe_serialization=True)`);
}

/**
 * Matches the file's tensor names to the model's, the way transformers does: names as `*ForCausalLM` writes them,
 * or without the trunk prefix as the base model (`GPT2Model`, `LlamaModel`) writes them; known buffers are skipped.
 * @returns model name → file tensor name
 */
function matchNames(dir: string, config: ModelConfig, located: Map<string, Located>): Map<string, Located> {
  const expected = expectedParamShapes(config);
  const prefix = trunkPrefix(config);
  const byModelName = new Map<string, Located>();
  const unexpected: string[] = [];
  for (const [fileName, loc] of located) {
    const modelName = expected.has(fileName) ? fileName : expected.has(prefix + fileName) ? prefix + fileName : null;
    if (modelName === null) {
      if (!isIgnorableTensor(config, fileName)) unexpected.push(`"${fileName}" in ${loc.reader.path}`);
      continue;
    }
    const prev = byModelName.get(modelName);
    if (prev) throw new CheckpointError(`${loc.reader.path}: tensor "${modelName}" appears twice ("${prev.entry.name}" and "${fileName}")`);
    byModelName.set(modelName, loc);
  }
  const what = `${config.sourceModelType}, ${config.numLayers} layers, hidden ${config.hiddenSize}, vocab ${config.vocabSize}, tie_word_embeddings ${config.tieWordEmbeddings}`;
  const missing = [...expected.keys()].filter((n) => !byModelName.has(n));
  if (missing.length > 0) {
    const where = [...new Set([...located.values()].map((l) => l.reader.path))].join(', ') || dir;
    const list = missing
      .slice(0, 5)
      .map((n) => `"${n}" [${expected.get(n)}]`)
      .join(', ');
    throw new CheckpointError(
      `${where}: missing tensor ${list}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}, which ${join(dir, CONFIG_FILE)} (${what}) requires; is this the checkpoint that config describes?`,
    );
  }
  if (unexpected.length > 0) {
    throw new CheckpointError(
      `unexpected tensor ${unexpected.slice(0, 5).join(', ')}${unexpected.length > 5 ? ` and ${unexpected.length - 5} more` : ''}: not part of the model ${join(dir, CONFIG_FILE)} describes (${what})`,
    );
  }
  for (const [name, shape] of expected) {
    const { reader, entry } = byModelName.get(name)!;
    if (entry.shape.length !== shape.length || entry.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `${reader.path}: tensor "${entry.name}" has shape [${entry.shape}] but ${join(dir, CONFIG_FILE)} (${what}) requires [${shape}]`,
      );
    }
    if (!FLOAT_DTYPES.has(entry.dtype)) {
      throw new CheckpointError(`${reader.path}: tensor "${entry.name}" is ${entry.dtype}; model weights must be F32, F16, BF16 or F64`);
    }
  }
  return byModelName;
}

/**
 * Loads `dir` as a CausalLM on the current tfjs backend.
 * @throws CheckpointError (missing/extra/misshapen tensors, pickled weights), FormatError (corrupt files),
 *   ConfigError (unsupported or impossible config)
 */
export async function loadModel(dir: string, opts: LoadOptions): Promise<CausalLM> {
  return withHostWeights(dir, (config, read) => createModel(config, read, opts));
}

/**
 * Opens `dir`'s weights on the host, checked against its config as loadModel checks them, and hands `use` the
 * config and a reader of float32 data by model parameter name; the files are closed when `use` returns. Model-
 * parallel ranks read only their slices through it, so no rank ever puts the whole model on its device.
 */
export function withHostWeights<T>(dir: string, use: (config: ModelConfig, read: (name: string) => Float32Array) => T): T {
  const config = readModelConfig(dir);
  const readers: SafetensorsReader[] = [];
  try {
    const tensors = matchNames(dir, config, openWeights(dir, readers));
    return use(config, (name) => {
      const t = tensors.get(name);
      if (!t) throw new CheckpointError(`${dir}: the model has no parameter "${name}"`);
      return t.reader.read(t.entry.name).data as Float32Array;
    });
  } finally {
    for (const r of readers) r.close();
  }
}
