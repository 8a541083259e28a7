/**
 * The `distill` command. Each subcommand lives in its own module and is loaded only when used, so `distill infer`
 * does not pay for the training stack. Errors a user can act on (DistillError) print as one clear line;
 * anything else is a bug and prints its stack.
 */
import { DistillError } from '../errors.ts';

type Main = (argv: string[]) => Promise<void>;

const COMMANDS: Record<string, { help: string; load: () => Promise<Main> }> = {
  start: {
    help: 'the main job on the bundled data: distil a student, train the same student with plain CE, compare',
    load: async () => (await import('./startCommand.ts')).startMain,
  },
  run: {
    help: 'distil a student from a teacher (NeMo flags: --student_path --teacher_path --data_paths ...)',
    load: async () => (await import('./runCommand.ts')).runMain,
  },
  pretrain: { help: 'train a model on next-token cross-entropy (no teacher)', load: async () => (await import('./runCommand.ts')).pretrainMain },
  evaluate: {
    help: 'student and teacher cross-entropy and their KD divergence on a dataset',
    load: async () => (await import('./evaluateCommand.ts')).evaluateMain,
  },
  init: {
    help: 'a freshly initialised checkpoint from a config.json (for pretraining or a student from scratch)',
    load: async () => (await import('./initCommand.ts')).initMain,
  },
  infer: { help: 'logits of a model for the input_ids in a safetensors file', load: async () => (await import('./infer.ts')).inferMain },
  prepare: { help: 'tokenize text/JSONL into Arrow shards', load: async () => (await import('./prepare.ts')).prepareMain },
  'cache-teacher': {
    help: 'run a teacher once over the training samples and cache its top-K / sampled / full targets (Arrow)',
    load: async () => (await import('./cacheTeacherCommand.ts')).cacheTeacherMain,
  },
  slurm: {
    help: 'write (--submit: submit) an sbatch script running `distill run` on several nodes: --nodes N --gpus_per_node G -- <run flags>',
    load: async () => (await import('./slurmCommand.ts')).slurmMain,
  },
  data: {
    help: '`distill data dump --data_paths PREFIX`: print a dataset one JSON line per document',
    load: async () => (await import('./dataDump.ts')).dataMain,
  },
};

function help(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((k) => k.length)) + 2;
  return [
    'usage: distill <command> [flags]   (distill <command> --help for its flags)',
    '',
    ...Object.entries(COMMANDS).map(([k, c]) => `  ${k.padEnd(w)}${c.help}`),
  ].join('\n');
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(help());
    return;
  }
  const c = COMMANDS[cmd];
  if (!c) throw new DistillError(`unknown command "${cmd}"\n\n${help()}`);
  await (
    await c.load()
  )(rest);
}

main(process.argv.slice(2)).then(
  // Dawn (webgpu) keeps the event loop alive; a finished command exits.
  () => process.exit(0),
  (e: unknown) => {
    if (e instanceof DistillError) {
      process.stderr.write(`distill: ${e.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`distill: internal error (please report): ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  },
);
