/**
 * `distill evaluate`: over all samples of the data (or of one part of --split), the student's and the teacher's
 * next-token cross-entropy and the KD divergence between them at the given temperature (without the τ² factor).
 * Prints one sentence, or with --json one JSON line instead.
 */
import { join } from 'node:path';
import { parseFlags, required, usage, type FlagSpecs } from './flags.ts';
import { RUN_FLAGS } from './runFlags.ts';
import { selectBackend, type BackendChoice } from '../backend/select.ts';
import { CONFIG_FILE, loadModel, readModelConfig } from '../checkpoint/load.ts';
import { checkSequenceLength } from '../model/config.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { noSamplesMessage } from '../data/sampleSource.ts';
import { SPLIT_NAMES, type SplitName } from '../data/split.ts';
import { ConfigError } from '../errors.ts';
import { openSampleSource } from '../train/dataSources.ts';
import { evaluateOn } from '../../pipelines/evaluate.ts';
import { DEFAULT_KD_LOSS } from '../losses/types.ts';

const COMMAND = 'distill evaluate';

/** Only what evaluation reads: no optimizer, schedule, checkpointing or parallel layout. */
const FLAGS = {
  student_path: { ...RUN_FLAGS.student_path, help: 'Hugging Face checkpoint directory of the model to evaluate' },
  teacher_path: { ...RUN_FLAGS.teacher_path, help: 'a teacher to compare with: adds its CE and the KD divergence between the two' },
  data_paths: RUN_FLAGS.data_paths,
  seq_length: RUN_FLAGS.seq_length,
  split: {
    kind: 'string',
    help: 'train,valid,test weights over documents, as the run; --eval_split picks the part read (0,1,0: all the data)',
    default: '0,1,0',
  },
  eval_split: {
    kind: 'string',
    help: "which part of --split to evaluate (e.g. --split 99,1,0 --eval_split valid: the run's held-out documents)",
    default: 'valid',
    choices: SPLIT_NAMES,
  },
  seed: { ...RUN_FLAGS.seed, help: 'seed of the document shuffle that cuts the samples (as the run)' },
  mbs: { kind: 'int', help: 'samples per forward pass', default: 4, min: 1 },
  kd_loss: { ...RUN_FLAGS.kd_loss, help: 'the divergence reported with --teacher_path' },
  temperature: RUN_FLAGS.temperature,
  jsd_beta: RUN_FLAGS.jsd_beta,
  skew_lambda: RUN_FLAGS.skew_lambda,
  loss_chunk: RUN_FLAGS.loss_chunk,
  backend: RUN_FLAGS.backend,
  json: { kind: 'boolean', help: 'print one JSON line instead of the sentence: kd_loss, student_ce, teacher_ce, tokens' },
  help: RUN_FLAGS.help,
} as const satisfies FlagSpecs;

export async function evaluateMain(argv: string[]): Promise<void> {
  const { flags: f, given } = parseFlags(argv, FLAGS, COMMAND);
  if (f.help) return void console.log(usage(COMMAND, 'Evaluate a student (and a teacher) on a dataset: next-token CE and the KD divergence.', FLAGS));
  const studentPath = required(COMMAND, 'student_path', f.student_path);
  const seqLength = f.seq_length!;
  // Configs and data first: a sequence too long for a model, or data too short for one sample, fails in a second.
  const studentConfig = readModelConfig(studentPath);
  const data = { dataPaths: f.data_paths ?? defaultDataPaths(), seqLength, split: f.split!, seed: f.seed! };
  const splitName = f.eval_split as SplitName;
  const source = openSampleSource(data, splitName, studentConfig.vocabSize);
  try {
    if (source.numSamples === 0) {
      const part = given.has('split') || given.has('eval_split') ? undefined : 'the data';
      throw new ConfigError(`${COMMAND}: ${noSamplesMessage(source, { split: data.split, splitName, part })}`);
    }
    checkSequenceLength(studentConfig, seqLength, 'the student', join(studentPath, CONFIG_FILE));
    if (f.teacher_path) checkSequenceLength(readModelConfig(f.teacher_path), seqLength, 'the teacher', join(f.teacher_path, CONFIG_FILE));
    await selectBackend(f.backend as BackendChoice);
    const student = await loadModel(studentPath, { trainable: false });
    const teacher = f.teacher_path ? await loadModel(f.teacher_path, { trainable: false }) : null;
    const r = await evaluateOn(student, teacher, source, {
      ...DEFAULT_KD_LOSS,
      kind: f.kd_loss as typeof DEFAULT_KD_LOSS.kind,
      temperature: f.temperature!,
      jsdBeta: f.jsd_beta!,
      skewLambda: f.skew_lambda!,
      // Fewer samples than --mbs: one smaller batch, rather than a full one that reads a sample twice.
      seqLength,
      microBatchSize: Math.min(f.mbs!, source.numSamples),
      chunkSize: f.loss_chunk!,
    });
    if (f.json) {
      console.log(JSON.stringify({ kd_loss: r.kdLoss ?? null, student_ce: r.studentCe, teacher_ce: r.teacherCe ?? null, tokens: r.tokens }));
    } else {
      console.log(
        `student CE ${r.studentCe.toFixed(4)}${teacher ? `  teacher CE ${r.teacherCe!.toFixed(4)}  KD ${r.kdLoss!.toFixed(5)}` : ''}  over ${r.tokens} tokens`,
      );
    }
  } finally {
    source.close();
  }
}
