/**
 * `distill data dump --data_paths PREFIX [--limit N]`: one JSON line per document,
 * `{"document": i, "sequences": [[ids...], ...]}` — Megatron's sentence split kept, Arrow documents as one sequence.
 * For checking what a dataset holds, and comparing it with Megatron's own reading.
 */
import { ConfigError } from '../errors.ts';
import { parseFlags, required, usage } from './flags.ts';
import { openTokenDataset } from '../data/dataset.ts';

const FLAGS = {
  data_paths: { kind: 'string', help: 'one dataset: a Megatron prefix, a shard directory or a .arrow file' },
  limit: { kind: 'int', help: 'print at most this many documents', min: 0 },
  help: { kind: 'boolean', help: 'show this help' },
} as const;

const CMD = 'distill data dump';

const DATA_HELP = [
  'usage: distill data <subcommand> [flags]   (distill data <subcommand> --help for its flags)',
  '',
  '  dump    print a dataset, one JSON line per document: distill data dump --data_paths PREFIX [--limit N]',
].join('\n');

/** `distill data <subcommand>`: only `dump` for now. */
export async function dataMain(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === '--help' || sub === '-h' || sub === 'help') return void console.log(DATA_HELP);
  if (sub !== 'dump') throw new ConfigError(`distill data: unknown subcommand ${sub === undefined ? '(none)' : `"${sub}"`}\n\n${DATA_HELP}`);
  await dataDumpMain(rest);
}

export async function dataDumpMain(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { flags: f } = parseFlags(argv, FLAGS, CMD);
  if (f.help) return void console.log(usage(CMD, 'Print a dataset, one JSON line per document.', FLAGS));
  const path = required(CMD, 'data_paths', f.data_paths);
  if (/\s/.test(path.trim())) throw new ConfigError(`${CMD}: --data_paths takes one dataset here, got ${JSON.stringify(path)}`);
  const ds = openTokenDataset(path.trim());
  try {
    const n = Math.min(ds.numDocuments, f.limit ?? Infinity);
    for (let i = 0; i < n; i++) {
      const line = JSON.stringify({ document: i, sequences: ds.documentSequences(i).map((s) => Array.from(s)) }) + '\n';
      // Respect back-pressure so dumping a large dataset into a pipe does not buffer it all.
      if (!out.write(line)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
  } finally {
    ds.close();
  }
}
