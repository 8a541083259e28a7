/**
 * msgpackr encoding of worker messages. Records (msgpackr's shared structures) are off: every frame decodes on
 * its own, which a stream that can lose a worker mid-way needs.
 */
import { Packr } from 'msgpackr';
import type { MessageKind, WorkerMessage } from './messages.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

// A Record, not a list: a kind added to WorkerMessage and missing here fails to compile instead of failing to decode.
const KIND_NAMES: Record<MessageKind, true> = {
  init: true,
  stop: true,
  shutdown: true,
  log: true,
  step: true,
  done: true,
  error: true,
  ring: true,
  ncclId: true,
  collectiveProbe: true,
  collectiveProbeReply: true,
  stepStats: true,
  teacherHead: true,
  teacherRequest: true,
  teacherHidden: true,
  teacherHeadAnnounced: true,
  teacherHiddenHeld: true,
  teacherHiddenPosted: true,
  stageTensors: true,
  paramShards: true,
};
const KINDS: ReadonlySet<string> = new Set(Object.keys(KIND_NAMES));

export function encodeMessage(m: WorkerMessage): Uint8Array {
  return packr.pack(m);
}

export function decodeMessage(frame: Uint8Array): WorkerMessage {
  const v: unknown = packr.unpack(frame);
  if (typeof v !== 'object' || v === null || !KINDS.has((v as { kind?: MessageKind }).kind as MessageKind)) {
    throw new TypeError(
      `worker frame of ${frame.byteLength} bytes is not a message (kind ${JSON.stringify((v as { kind?: unknown } | null)?.kind)}); are both sides the same version?`,
    );
  }
  return v as WorkerMessage;
}
