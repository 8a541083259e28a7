/**
 * `distill evaluate`: over all samples of the data, the student's and the teacher's next-token cross-entropy and
 * the KD divergence between them at the given temperature (without the τ² factor). `--json` ends with one JSON line.
 */
import { parseFlags, required, usage } from './flags.ts';
import { RUN_FLAGS } from './runFlags.ts';
import { selectBackend } from '../backend/select.ts';
import { loadModel } from '../checkpoint/load.ts';
import { defaultDataPaths } from '../data/defaults.ts';
import { openSampleSource } from '../train/dataSources.ts';
import { evaluateOn } from '../../pipelines/evaluate.ts';
import { DEFAULT_KD_LOSS } from '../losses/types.ts';

const FLAGS = {
  student_path: RUN_FLAGS.student_path,
  teacher_path: RUN_FLAGS.teacher_path,
  data_paths: RUN_FLAGS.data_paths,
  seq_length: RUN_FLAGS.seq_length,
  seed: RUN_FLAGS.seed,
  mbs: { ...RUN_FLAGS.mbs, default: 4 },
  kd_loss: RUN_FLAGS.kd_loss,
  temperature: RUN_FLAGS.temperature,
  jsd_beta: RUN_FLAGS.jsd_beta,
  skew_lambda: RUN_FLAGS.skew_lambda,
  loss_chunk: RUN_FLAGS.loss_chunk,
  backend: RUN_FLAGS.backend,
  json: { kind: 'boolean', help: 'end with one JSON line: kd_loss, student_ce, teacher_ce, tokens' },
  help: RUN_FLAGS.help,
} as const;

export async function evaluateMain(argv: string[]): Promise<void> {
  const { flags: f } = parseFlags(argv, FLAGS, 'distill evaluate');
  if (f.help) return void console.log(usage('distill evaluate', 'Evaluate a student (and a teacher) on a dataset.', FLAGS));
  await selectBackend(f.backend as Parameters<typeof selectBackend>[0]);
  const student = await loadModel(required('distill evaluate', 'student_path', f.student_path), { trainable: false });
  const teacher = f.teacher_path ? await loadModel(f.teacher_path, { trainable: false }) : null;
  const source = openSampleSource({ dataPaths: f.data_paths ?? defaultDataPaths(), seqLength: f.seq_length!, split: '1,0,0', seed: f.seed! }, 'train', student.config.vocabSize);
  const r = await evaluateOn(student, teacher, source, {
    ...DEFAULT_KD_LOSS, kind: f.kd_loss as typeof DEFAULT_KD_LOSS.kind, temperature: f.temperature!, jsdBeta: f.jsd_beta!, skewLambda: f.skew_lambda!,
    seqLength: f.seq_length!, microBatchSize: f.mbs!, chunkSize: f.loss_chunk!,
  });
  const out = { kd_loss: r.kdLoss ?? null, student_ce: r.studentCe, teacher_ce: r.teacherCe ?? null, tokens: r.tokens };
  if (!f.json) console.log(`student CE ${r.studentCe.toFixed(4)}${teacher ? `  teacher CE ${r.teacherCe!.toFixed(4)}  KD ${r.kdLoss!.toFixed(5)}` : ''}  over ${r.tokens} tokens`);
  console.log(JSON.stringify(out));
}
