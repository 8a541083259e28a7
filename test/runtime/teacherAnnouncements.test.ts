/**
 * The announcements of a teacher pair on a communicator (nccl/teacherLink.ts) are message kinds of their own:
 * each decodes from its frame as it was sent, and a frames-path reader of teacherHidden or teacherHead, with
 * announcements of the same request queued before it, gets the frame with values, never an announcement.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeMessage, encodeMessage } from '../../src/runtime/frameCodec.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';
import { describe, type TeacherHeadAnnounced, type TeacherHiddenHeld, type TeacherHiddenPosted } from '../../src/runtime/messages.ts';
import { TransportClosedError } from '../../src/runtime/transport.ts';
import { arrayToFrame, frameToArray } from '../../src/parallel/tensorFrame.ts';

const announcements: [TeacherHeadAnnounced, TeacherHiddenHeld, TeacherHiddenPosted] = [
  { kind: 'teacherHeadAnnounced', shape: [151936, 1536] },
  { kind: 'teacherHiddenHeld', id: 7, shape: [34, 64] },
  { kind: 'teacherHiddenPosted', id: 7, shape: [34, 64] },
];

test('each announcement decodes from its frame as it was sent, and describe names its request and shape', () => {
  for (const m of announcements) assert.deepEqual(decodeMessage(encodeMessage(m)), m, m.kind);
  assert.equal(describe(announcements[0]), 'teacher head [151936, 1536] announced');
  assert.equal(describe(announcements[1]), 'teacher hidden states 7 held [34, 64]');
  assert.equal(describe(announcements[2]), 'receive of teacher hidden states 7 posted [34, 64]');
});

test('a frames-path reader of the head and hidden states gets their values, not the announcements queued before them', async () => {
  const [teacher, student] = localTransports(2);
  try {
    const head = new Float32Array([1, 2, 3, 4, 5, 6]);
    const hidden = new Float32Array([0.5, -1.5]);
    teacher.send(student.rank, { kind: 'teacherHeadAnnounced', shape: [3, 2] });
    teacher.send(student.rank, { kind: 'teacherHiddenHeld', id: 0, shape: [1, 2] });
    teacher.send(student.rank, { kind: 'teacherHead', head: arrayToFrame(head, [3, 2]) });
    teacher.send(student.rank, { kind: 'teacherHidden', id: 0, hidden: arrayToFrame(hidden, [1, 2]) });
    const h = await student.receive(teacher.rank, 'teacherHead');
    assert.deepEqual(frameToArray(h.head), head);
    const m = await student.receive(teacher.rank, 'teacherHidden');
    assert.equal(m.id, 0);
    assert.deepEqual(frameToArray(m.hidden), hidden);
    // The announcements still wait under their own kinds.
    assert.deepEqual(await student.receive(teacher.rank, 'teacherHeadAnnounced'), { kind: 'teacherHeadAnnounced', shape: [3, 2] });
    assert.deepEqual(await student.receive(teacher.rank, 'teacherHiddenHeld'), { kind: 'teacherHiddenHeld', id: 0, shape: [1, 2] });
  } finally {
    for (const t of [teacher, student]) t.close(new TransportClosedError('test over'));
  }
});
