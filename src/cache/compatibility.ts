/**
 * Whether a teacher cache fits a run, checked before the first step: the cache must have been made on the run's
 * data (same paths, weights, document ranges, split and seed, so sample i is the same window), at its seq_length,
 * for a vocabulary the student shares, over every sample the run will read, at a temperature and for a divergence
 * its targets can give. When the run also names --teacher_path, the teacher's files must hash to what the cache
 * recorded (a retrained or edited teacher makes the cache stale). All differences are reported at once, and only
 * those: at another seq_length the data fingerprint and the sample indices cannot be compared, so they are checked
 * once seq_length agrees rather than reported as differences of their own.
 */
import type { KdLossOptions } from '../losses/types.ts';
import { CacheMismatchError, type CacheFingerprint } from './fingerprint.ts';
import { parseSplit } from '../data/split.ts';

/** Padding a vocabulary to a multiple of 128 (or of TP × 128) differs by less than this (as vocabularyCheck.ts). */
const MAX_PADDING_DIFFERENCE = 1024;

export interface RunView {
  cacheDir: string;
  dataFingerprint: string;
  /** The run's data flags; when given, a data refusal names which of them differ. */
  data?: { dataPaths: string; split: string; seed: number };
  seqLength: number;
  studentVocab: number;
  /** Samples the run reads: sample indices [0, samplesNeeded) (readBatches wraps at the epoch). */
  samplesNeeded: number;
  loss: Pick<KdLossOptions, 'kind' | 'temperature'>;
  /** When the run names the teacher too: hashModelFiles of it. */
  teacherSha256?: string;
  teacherPath?: string;
}

/** Throws CacheMismatchError naming every part that differs; returns a line for the run log. */
export function checkCacheForRun(fp: CacheFingerprint, run: RunView): string {
  const parts: string[] = [];
  const lines: string[] = [];
  const refuse = (part: string, line: string): void => {
    if (!parts.includes(part)) parts.push(part);
    lines.push(`${part} differs: ${line}`);
  };
  if (run.teacherSha256 !== undefined && run.teacherSha256 !== fp.teacherSha256) {
    refuse(
      'teacher',
      `${run.teacherPath} hashes to ${run.teacherSha256.slice(0, 12)}, the cache was made from ${fp.teacherSha256.slice(0, 12)} (the teacher's weights or config changed)`,
    );
  }
  // The data fingerprint counts samples of seq_length + 1 tokens, and sample i is another window at another
  // seq_length: both compare only at the same seq_length, else the one real difference would be reported three times.
  const sameSeqLength = run.seqLength === fp.seqLength;
  if (!sameSeqLength) refuse('seq_length', `the run's --seq_length ${run.seqLength}, the cache's ${fp.seqLength}`);
  if (sameSeqLength && run.dataFingerprint !== fp.dataFingerprint) {
    const flags = run.data ? dataFlagsThatDiffer(fp, run.data, true) : [];
    refuse(
      'data',
      flags.length > 0
        ? flags.join(', ')
        : run.data
          ? `the same --data_paths, --split and --seed, but the files changed since the cache was made (fingerprint ${run.dataFingerprint.slice(0, 12)}, the cache's ${fp.dataFingerprint.slice(0, 12)}); re-make the cache`
          : `the run's --data_paths/--split/--seed fingerprint ${run.dataFingerprint.slice(0, 12)}, the cache's ${fp.dataFingerprint.slice(0, 12)} (made from --data_paths "${fp.dataPaths}" --split ${fp.split} --seed ${fp.dataSeed})`,
    );
  } else if (!sameSeqLength && run.data) {
    // Paths are compared as text only to explain a fingerprint that differs (the same files have many spellings).
    const flags = dataFlagsThatDiffer(fp, run.data, false);
    if (flags.length > 0) refuse('data', flags.join(', '));
  }
  if (Math.abs(run.studentVocab - fp.vocabSize) > MAX_PADDING_DIFFERENCE) {
    refuse(
      'vocabulary',
      `the student has ${run.studentVocab} ids, the cache's teacher ${fp.vocabSize}: more than padding apart, so they likely use different tokenizers`,
    );
  }
  if (sameSeqLength && (fp.sampleStart > 0 || fp.sampleEnd < run.samplesNeeded)) {
    refuse(
      'sample range',
      `the run reads samples [0, ${run.samplesNeeded}), the cache holds [${fp.sampleStart}, ${fp.sampleEnd}); re-make it with --num_samples ${run.samplesNeeded} (or --max_steps/--gbs of the run)`,
    );
  }
  if (fp.method !== 'full' && run.loss.kind !== 'forward_kl') {
    refuse(
      'loss',
      `a ${fp.method} cache gives forward-KL targets only, the run asks for --kd_loss ${run.loss.kind}; use --kd_loss forward_kl or a --method full cache`,
    );
  }
  if (fp.method !== 'full' && run.loss.temperature !== fp.temperature) {
    refuse(
      'temperature',
      `the run's --temperature ${run.loss.temperature}, the ${fp.method} cache's ${fp.temperature} (its ${fp.method === 'topk' ? 'ghost mass' : 'draws'} hold only at that τ); re-make it with --temperature ${run.loss.temperature}`,
    );
  }
  if (parts.length > 0) {
    throw new CacheMismatchError(parts, `--teacher_cache ${run.cacheDir} does not fit this run: ${lines.join('; ')}.`);
  }
  const what = fp.method === 'topk' ? `top-${fp.topK} + ghost` : fp.method === 'sample' ? `${fp.samples} draws` : 'full log-softmax';
  return `teacher cache: ${run.cacheDir} (${what}, ${fp.valueDtype}, τ ${fp.temperature}, samples [${fp.sampleStart}, ${fp.sampleEnd})); the teacher is not loaded`;
}

/** Which of the run's data flags differ from the ones the cache was made with (the paths too when `paths`). */
function dataFlagsThatDiffer(fp: CacheFingerprint, d: NonNullable<RunView['data']>, paths: boolean): string[] {
  const out: string[] = [];
  const words = (p: string): string => p.trim().split(/\s+/).join(' ');
  if (paths && words(d.dataPaths) !== words(fp.dataPaths)) out.push(`the run's --data_paths "${d.dataPaths}", the cache's "${fp.dataPaths}"`);
  if (parseSplit(d.split).join() !== parseSplit(fp.split).join()) out.push(`the run's --split ${d.split}, the cache's ${fp.split}`);
  if (d.seed !== fp.dataSeed) out.push(`the run's --seed ${d.seed}, the cache's ${fp.dataSeed}`);
  return out;
}
