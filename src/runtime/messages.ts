/**
 * Every message that crosses a worker boundary, one type each. Workers and the launcher exchange these as
 * msgpackr frames (frameCodec.ts); `kind` is the discriminant a receiver waits on.
 */
import type { DistillationRecipe } from '../recipe/config.ts';
import type { StepResult } from '../train/batch.ts';
import type { RunResult } from '../train/runResult.ts';
import type { TensorFrame } from '../parallel/tensorFrame.ts';
import type { ParallelLayout } from '../parallel/layout.ts';

/** The launcher's address on a transport; workers are 0..n-1 (students first, then teachers). */
export const LAUNCHER = -1;

// launcher → worker

export interface StudentInit {
  kind: 'init';
  role: 'student';
  recipe: DistillationRecipe;
  workerId: number;
  /** Data-parallel rank and size; the ranks' worker ids, in rank order. */
  dpRank: number;
  dpSize: number;
  group: number[];
  /** Device index on this node (GPU for tensorflow/webgpu; informational for wasm/cpu). */
  deviceIndex: number;
  /** Worker id of the teacher serving this rank, or null when the teacher runs in this worker. */
  teacherWorker: number | null;
  stopAfterSteps: number | null;
  bucketBytes: number;
}

export interface TeacherInit {
  kind: 'init';
  role: 'teacher';
  recipe: DistillationRecipe;
  workerId: number;
  deviceIndex: number;
  /** Worker ids of the students this teacher serves. */
  students: number[];
}

/** One worker of a tensor/pipeline/context-parallel layout (src/parallel/layout.ts); it runs the teacher's matching part too. */
export interface ModelParallelInit {
  kind: 'init';
  role: 'modelParallel';
  recipe: DistillationRecipe;
  workerId: number;
  layout: ParallelLayout;
  deviceIndex: number;
  stopAfterSteps: number | null;
}

/** Stop after the current step (Ctrl-C, an abort signal): the ranks agree on the step in the next all-reduce. */
export interface StopMessage {
  kind: 'stop';
}

/** The students are done: a teacher worker exits. */
export interface ShutdownMessage {
  kind: 'shutdown';
}

// worker → launcher

export interface LogMessage {
  kind: 'log';
  line: string;
}

/** Rank 0's step result, losses already summed over the ranks. */
export interface StepMessage {
  kind: 'step';
  result: StepResult;
}

export interface DoneMessage {
  kind: 'done';
  /** Rank 0's result; null from other workers. */
  result: RunResult | null;
}

export interface ErrorMessage {
  kind: 'error';
  name: string;
  message: string;
  stack: string;
}

// worker ↔ worker

/** One chunk of a ring all-reduce; `tag` names the reduction, so a desynchronised ring fails loudly. */
export interface RingChunk {
  kind: 'ring';
  tag: number;
  chunk: number;
  data: TensorFrame;
}

/**
 * Rank 0 of a group to the others: the ncclUniqueId its communicator is made with (src/parallel/nccl/bootstrap.ts),
 * or null with the reason when rank 0 cannot run NCCL, so that every rank of the group falls back to the ring together.
 */
export interface NcclUniqueIdMessage {
  kind: 'ncclId';
  group: string;
  id: Uint8Array | null;
  reason: string | null;
}

/** A rank whose collective did not finish asks the others of its group how far they got (src/parallel/nccl/liveness.ts). */
export interface CollectiveProbe {
  kind: 'collectiveProbe';
  group: string;
}

/** The answer: how many collectives of the group this rank has issued (a hung rank does not answer). */
export interface CollectiveProbeReply {
  kind: 'collectiveProbeReply';
  group: string;
  issued: number;
}

/** A rank's share of a step's metrics, sent to rank 0, which sums the losses over the ranks. */
export interface StepStats {
  kind: 'stepStats';
  step: number;
  loss: number;
  kdLoss: number | null;
  ceLoss: number | null;
  tokens: number;
  elapsedMs: number;
  skipped: boolean;
}

/** The teacher's output projection [vocab, hidden], sent once to each student it serves. */
export interface TeacherHead {
  kind: 'teacherHead';
  head: TensorFrame;
}

export interface TeacherRequest {
  kind: 'teacherRequest';
  id: number;
  /** [mbs, seq] int32 input ids. */
  inputIds: TensorFrame;
}

export interface TeacherHidden {
  kind: 'teacherHidden';
  id: number;
  /** [mbs·seq, teacher hidden] final hidden states. */
  hidden: TensorFrame;
}

// The announcements of a pair whose tensors go over its NCCL communicator (src/parallel/nccl/teacherLink.ts): shapes
// only, since NCCL carries bytes and not shapes; the tensors themselves never cross the transport there.

/** Teacher to student: the head [vocab, hidden] of this shape is being sent on the pair's communicator. */
export interface TeacherHeadAnnounced {
  kind: 'teacherHeadAnnounced';
  shape: number[];
}

/** Teacher to student: request `id`'s final hidden states are held on the teacher's device, in this shape. */
export interface TeacherHiddenHeld {
  kind: 'teacherHiddenHeld';
  id: number;
  shape: number[];
}

/** Student to teacher: the receive of request `id`'s states is posted, in this shape; the teacher may send. */
export interface TeacherHiddenPosted {
  kind: 'teacherHiddenPosted';
  id: number;
  shape: number[];
}

/** Activations (forward) or their gradients (backward) passed between pipeline stages; `tag` names the micro-batch and direction. */
export interface StageTensors {
  kind: 'stageTensors';
  tag: string;
  tensors: TensorFrame[];
}

/** A model-parallel rank's parameters (or optimizer moments), sent to rank 0 to be written as full tensors. */
export interface ParamShards {
  kind: 'paramShards';
  tag: string;
  names: string[];
  tensors: TensorFrame[];
}

export type WorkerMessage =
  | StudentInit
  | TeacherInit
  | ModelParallelInit
  | StopMessage
  | ShutdownMessage
  | LogMessage
  | StepMessage
  | DoneMessage
  | ErrorMessage
  | RingChunk
  | NcclUniqueIdMessage
  | CollectiveProbe
  | CollectiveProbeReply
  | StepStats
  | TeacherHead
  | TeacherRequest
  | TeacherHidden
  | TeacherHeadAnnounced
  | TeacherHiddenHeld
  | TeacherHiddenPosted
  | StageTensors
  | ParamShards;

export type MessageKind = WorkerMessage['kind'];
export type MessageOf<K extends MessageKind> = Extract<WorkerMessage, { kind: K }>;

/** One line about a message, for the error that names a dead worker's last words. */
export function describe(m: WorkerMessage): string {
  switch (m.kind) {
    case 'init':
      return `init (${m.role})`;
    case 'log':
      return `log "${m.line.slice(0, 120)}"`;
    case 'step':
      return `step ${m.result.step} done (loss ${m.result.loss.toFixed(4)})`;
    case 'stepStats':
      return `stats of step ${m.step} (loss ${m.loss.toFixed(4)})`;
    case 'ring':
      return `all-reduce chunk (reduction ${m.tag}, chunk ${m.chunk}, ${m.data.bytes.byteLength} bytes)`;
    case 'ncclId':
      return `NCCL unique id of group ${m.group}${m.id ? '' : ` (none: ${m.reason})`}`;
    case 'teacherRequest':
      return `teacher request ${m.id}`;
    case 'teacherHidden':
      return `teacher hidden states ${m.id}`;
    case 'teacherHeadAnnounced':
      return `teacher head [${m.shape.join(', ')}] announced`;
    case 'teacherHiddenHeld':
      return `teacher hidden states ${m.id} held [${m.shape.join(', ')}]`;
    case 'teacherHiddenPosted':
      return `receive of teacher hidden states ${m.id} posted [${m.shape.join(', ')}]`;
    case 'stageTensors':
      return `stage tensors ${m.tag}`;
    case 'paramShards':
      return `parameter shards ${m.tag}`;
    case 'error':
      return `error: ${m.message.split('\n')[0]}`;
    default:
      return m.kind;
  }
}
