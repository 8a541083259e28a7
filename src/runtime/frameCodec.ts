/**
 * msgpackr encoding of worker messages. Records (msgpackr's shared structures) are off: every frame decodes on
 * its own, which a stream that can lose a worker mid-way needs.
 */
import { Packr } from 'msgpackr';
import type { MessageKind, WorkerMessage } from './messages.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

const KINDS: ReadonlySet<MessageKind> = new Set<MessageKind>([
  'init',
  'stop',
  'shutdown',
  'log',
  'step',
  'done',
  'error',
  'ring',
  'ncclId',
  'collectiveProbe',
  'collectiveProbeReply',
  'stepStats',
  'teacherHead',
  'teacherRequest',
  'teacherHidden',
  'teacherHeadAnnounced',
  'teacherHiddenHeld',
  'teacherHiddenPosted',
  'stageTensors',
  'paramShards',
]);

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
