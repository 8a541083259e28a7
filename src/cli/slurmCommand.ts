/**
 * `distill slurm`: writes (and with --submit, submits) an sbatch script that runs `distill run` on several nodes,
 * as NeMo-Run's Slurm executor does. One task per node: each `distill run` forks --devices workers on its node,
 * finds its node rank in SLURM_PROCID and node 0 in SLURM_JOB_NODELIST (src/runtime/launchEnv.ts).
 *
 *   distill slurm --nodes 2 --gpus_per_node 8 --partition gpu --time 04:00:00 --account proj [--submit] -- \
 *     --name kd --student_path S --teacher_path T --data_paths D --backend tensorflow
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../errors.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { validateRecipe } from '../recipe/validate.ts';
import { parseFlags, required, usage, type FlagSpecs } from './flags.ts';
import { recipeFromFlags } from './runFlags.ts';

const FLAGS = {
  nodes: { kind: 'int', help: 'nodes (sbatch --nodes; passed on as --num_nodes)', min: 1 },
  gpus_per_node: { kind: 'int', help: 'GPUs per node (sbatch --gpus-per-node; passed on as --devices)', min: 1 },
  partition: { kind: 'string', help: 'sbatch --partition' },
  time: { kind: 'string', help: 'sbatch --time, e.g. 04:00:00' },
  account: { kind: 'string', help: 'sbatch --account' },
  job_name: { kind: 'string', help: 'sbatch --job-name (default: distill-<run name>)' },
  master_port: { kind: 'int', help: 'rendezvous port on node 0 (default: 20000 + job id mod 20000)', min: 1 },
  stop_before_s: { kind: 'int', help: 'seconds before the time limit at which Slurm sends SIGINT: the run checkpoints and stops', default: 180, min: 0 },
  distill: { kind: 'string', help: "how the nodes start distill (default: this node binary and this checkout's bin/distill.js)" },
  script: { kind: 'string', help: 'where to write the script (default: <log_dir>/<name>/distill.sbatch)' },
  submit: { kind: 'boolean', help: 'run sbatch on the script and print the job id' },
  help: { kind: 'boolean', help: 'print this help' },
} as const satisfies FlagSpecs;

export interface SlurmJob {
  nodes: number;
  gpusPerNode: number;
  partition?: string;
  time?: string;
  account?: string;
  jobName: string;
  masterPort?: number;
  stopBeforeS: number;
  /** The command that starts distill on a node, already shell-quoted. */
  distill: string;
  /** `distill run` flags, with --num_nodes and --devices. */
  runArgs: string[];
  /** Slurm's output file (%j: the job id). */
  output: string;
  /** Where the job runs, so relative paths in the flags name the same files as here. */
  chdir: string;
}

/** Single-quotes an argument for bash when it needs it. */
export function shellQuote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

export function sbatchScript(j: SlurmJob): string {
  const opt = (k: string, v: string | number | undefined): string[] => (v === undefined ? [] : [`#SBATCH --${k}=${v}`]);
  return [
    '#!/bin/bash',
    '# Written by `distill slurm` (src/cli/slurmCommand.ts). Submitting it again resumes from the last checkpoint.',
    ...opt('job-name', j.jobName),
    ...opt('nodes', j.nodes),
    // One task per node: distill forks its --devices workers itself and relays between them.
    ...opt('ntasks-per-node', 1),
    ...opt('gpus-per-node', j.gpusPerNode),
    ...opt('partition', j.partition),
    ...opt('time', j.time),
    ...opt('account', j.account),
    ...opt('output', j.output),
    ...opt('chdir', j.chdir),
    // SIGINT to the job steps before the time limit: every node stops after the step in flight, rank 0 checkpoints.
    ...(j.stopBeforeS > 0 ? [`#SBATCH --signal=INT@${j.stopBeforeS}`] : []),
    'set -euo pipefail',
    '# Node 0 is the first host of SLURM_JOB_NODELIST; it listens on that address only. Each node reads its rank from SLURM_PROCID.',
    ...(j.masterPort !== undefined ? [`export MASTER_PORT=${j.masterPort}`] : []),
    `srun --kill-on-bad-exit=1 --ntasks-per-node=1 ${j.distill} run ${j.runArgs.map(shellQuote).join(' ')}`,
    '',
  ].join('\n');
}

export async function slurmMain(argv: string[]): Promise<void> {
  const cmd = 'distill slurm';
  const { flags: f, rest, positional } = parseFlags(argv, FLAGS, cmd);
  if (f.help)
    return void console.log(
      usage(`${cmd} -- <distill run flags>`, 'Write (and with --submit, submit) an sbatch script that runs `distill run` on several nodes.', FLAGS),
    );
  if (positional.length) throw new ConfigError(`${cmd}: unexpected ${positional.join(' ')}; \`distill run\` flags go after a bare --`);
  const nodes = required(cmd, 'nodes', f.nodes);
  const gpus = required(cmd, 'gpus_per_node', f.gpus_per_node);
  for (const clash of ['--num_nodes', '--devices', '--num-nodes']) {
    if (rest.some((a) => a === clash || a.startsWith(clash + '=')))
      throw new ConfigError(`${cmd}: give --nodes and --gpus_per_node, not ${clash} after --: they become --num_nodes and --devices`);
  }
  const runArgs = [...rest, '--num_nodes', String(nodes), '--devices', String(gpus)];
  // Parse and check the run's flags here, so a typo fails now and not after hours in the queue.
  const recipe = recipeFromFlags('distill', runArgs, defaultDataPaths);
  validateRecipe(recipe);
  const runDir = resolve(recipe.logDir, recipe.name);
  // Slurm does not create the output file's folder.
  mkdirSync(runDir, { recursive: true });
  const bin = fileURLToPath(new URL('../../bin/distill.js', import.meta.url));
  const job: SlurmJob = {
    nodes,
    gpusPerNode: gpus,
    partition: f.partition,
    time: f.time,
    account: f.account,
    jobName: f.job_name ?? `distill-${recipe.name}`,
    masterPort: f.master_port,
    stopBeforeS: f.stop_before_s ?? 0,
    distill: f.distill ?? `${shellQuote(process.execPath)} ${shellQuote(bin)}`,
    runArgs,
    output: join(runDir, 'slurm-%j.out'),
    chdir: process.cwd(),
  };
  const script = resolve(f.script ?? join(runDir, 'distill.sbatch'));
  mkdirSync(dirname(script), { recursive: true });
  writeFileSync(script, sbatchScript(job), { mode: 0o755 });
  if (!f.submit) return void console.log(JSON.stringify({ script, submit: `sbatch ${script}` }));
  const r = spawnSync('sbatch', ['--parsable', script], { encoding: 'utf8' });
  if (r.error) throw new ConfigError(`${cmd}: could not run sbatch (${r.error.message}); the script is at ${script}: submit it from a Slurm login node`);
  if (r.status !== 0) throw new ConfigError(`${cmd}: sbatch ${script} failed (exit ${r.status}): ${r.stderr.trim()}`);
  console.log(JSON.stringify({ script, job_id: r.stdout.trim().split(';')[0] }));
}
