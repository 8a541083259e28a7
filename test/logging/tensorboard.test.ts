/**
 * TensorBoard event files: CRC-32C known answers, TFRecord framing and the Event protobuf, checked by an
 * independent bitwise CRC and a minimal protobuf parser written here (not the encoder's own code),
 * and, when Python's tensorboard package is importable, by TensorBoard's own reader.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { crc32, crc32c, maskCrc32c } from '../../src/logging/crc.ts';
import { encodeEvent, FILE_VERSION, frameRecord, TensorBoardWriter } from '../../src/logging/tensorboard.ts';

/** Bit-at-a-time CRC-32C, deliberately not table-driven, as an independent reference. */
function crc32cBitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
  }
  return (c ^ 0xffffffff) >>> 0;
}

const mask = (crc: number): number => ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) % 2 ** 32;

interface Field {
  field: number;
  wire: number;
  varint?: bigint;
  bytes?: Uint8Array;
  f64?: number;
  f32?: number;
}

/** Minimal protobuf wire-format parser: returns the fields of one message in order. */
function parseProto(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let i = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++];
      if (b === undefined) throw new Error('truncated varint');
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const f: Field = { field: key >> 3, wire: key & 7 };
    if (f.wire === 0) f.varint = varint();
    else if (f.wire === 1) {
      f.f64 = view.getFloat64(i, true);
      i += 8;
    } else if (f.wire === 2) {
      const n = Number(varint());
      f.bytes = buf.subarray(i, i + n);
      if (f.bytes.length !== n) throw new Error('truncated bytes field');
      i += n;
    } else if (f.wire === 5) {
      f.f32 = view.getFloat32(i, true);
      i += 4;
    } else throw new Error(`unexpected wire type ${f.wire}`);
    out.push(f);
  }
  return out;
}

interface ParsedEvent {
  wallTime?: number;
  step: bigint;
  fileVersion?: string;
  values: { tag: string; value: number }[];
}

function parseEvent(data: Uint8Array): ParsedEvent {
  const ev: ParsedEvent = { step: 0n, values: [] };
  for (const f of parseProto(data)) {
    if (f.field === 1 && f.wire === 1) ev.wallTime = f.f64;
    else if (f.field === 2 && f.wire === 0) ev.step = BigInt.asIntN(64, f.varint ?? 0n);
    else if (f.field === 3 && f.wire === 2) ev.fileVersion = new TextDecoder().decode(f.bytes);
    else if (f.field === 5 && f.wire === 2) {
      for (const v of parseProto(f.bytes ?? new Uint8Array())) {
        assert.equal(v.field, 1, 'Summary has only repeated Value (field 1)');
        let tag = '';
        let value = NaN;
        for (const vf of parseProto(v.bytes ?? new Uint8Array())) {
          if (vf.field === 1 && vf.wire === 2) tag = new TextDecoder().decode(vf.bytes);
          else if (vf.field === 2 && vf.wire === 5) value = vf.f32 ?? NaN;
          else assert.fail(`unexpected Summary.Value field ${vf.field}/${vf.wire}`);
        }
        ev.values.push({ tag, value });
      }
    } else assert.fail(`unexpected Event field ${f.field}/${f.wire}`);
  }
  return ev;
}

/** Splits a TFRecord file, verifying both masked CRCs of every record. */
function readRecords(file: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let i = 0;
  while (i < file.length) {
    assert.ok(i + 12 <= file.length, `truncated header at ${i}`);
    const len = Number(view.getBigUint64(i, true));
    assert.equal(view.getUint32(i + 8, true), mask(crc32cBitwise(file.subarray(i, i + 8))), `length CRC at ${i}`);
    const data = file.subarray(i + 12, i + 12 + len);
    assert.equal(data.length, len, `truncated data at ${i}`);
    assert.equal(view.getUint32(i + 12 + len, true), mask(crc32cBitwise(data)), `data CRC at ${i}`);
    out.push(data);
    i += 16 + len;
  }
  return out;
}

test('CRC-32C and CRC-32 known answers, and the TFRecord mask', () => {
  const check = new TextEncoder().encode('123456789');
  assert.equal(crc32c(check), 0xe3069283);
  assert.equal(crc32cBitwise(check), 0xe3069283);
  assert.equal(crc32(check), 0xcbf43926);
  assert.equal(crc32c(new Uint8Array(0)), 0);
  // Continuing over a split buffer gives the same CRC as one pass.
  assert.equal(crc32c(check.subarray(4), crc32c(check.subarray(0, 4))), 0xe3069283);
  for (const c of [0, 1, 0xe3069283, 0xffffffff, 0x80000000]) assert.equal(maskCrc32c(c), mask(c));
  const random = Uint8Array.from({ length: 1000 }, (_, k) => (k * 2654435761) >>> 24);
  assert.equal(crc32c(random), crc32cBitwise(random));
});

test('record framing and Event encoding decode with an independent parser', () => {
  const data = encodeEvent({ wallTime: 1700000000.25, step: 2 ** 40 + 3, scalars: [{ tag: 'train/loss', value: 2.5 }] });
  const framed = frameRecord(data);
  assert.equal(framed.length, data.length + 16);
  const [rec] = readRecords(framed);
  const ev = parseEvent(rec);
  assert.equal(ev.wallTime, 1700000000.25);
  assert.equal(ev.step, 2n ** 40n + 3n, 'int64 step past 2^32 survives the varint');
  assert.deepEqual(ev.values, [{ tag: 'train/loss', value: 2.5 }]);

  // The checker itself must catch corruption, or the test above proves nothing.
  const bad = Uint8Array.from(framed);
  bad[14] ^= 1;
  assert.throws(() => readRecords(bad), /data CRC/);
});

test('TensorBoardWriter writes a named event file that parses back', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tb-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  let clock = 1_700_000_123_456;
  const w = TensorBoardWriter.open(dir, { hostname: 'node-1', now: () => clock });
  assert.equal(w.path, join(dir, 'events.out.tfevents.1700000123.node-1'));
  for (let step = 1; step <= 20; step++) {
    clock += 1000;
    w.scalars({ 'train/loss': 5 / step, 'train/lr': 3e-4, 'train/kd_loss': undefined, 'train/bad': NaN }, step);
  }
  w.scalar('valid/loss', 1.75, 20);
  w.close();

  const bytes = readFileSync(w.path);
  // Every event file TensorFlow writes starts with this header: a 24-byte first record
  // (wall_time + file_version) whose length CRC is masked to a3 7f 4b 22.
  assert.deepEqual([...bytes.subarray(0, 12)], [0x18, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22]);
  const records = readRecords(bytes).map(parseEvent);
  assert.equal(records.length, 22);
  assert.equal(records[0].fileVersion, FILE_VERSION);
  assert.equal(records[0].step, 0n);
  assert.equal(records[0].wallTime, 1_700_000_123.456);
  for (let step = 1; step <= 20; step++) {
    const ev = records[step];
    assert.equal(ev.step, BigInt(step));
    assert.equal(ev.fileVersion, undefined, 'only the first record carries file_version');
    assert.deepEqual(ev.values, [
      { tag: 'train/loss', value: Math.fround(5 / step) },
      { tag: 'train/lr', value: Math.fround(3e-4) },
    ]);
    assert.equal(ev.wallTime, (1_700_000_123_456 + step * 1000) / 1000);
  }
  assert.deepEqual(records[21].values, [{ tag: 'valid/loss', value: 1.75 }]);

  // A second writer in the same second gets its own file instead of appending to the first.
  const w2 = TensorBoardWriter.open(dir, { hostname: 'node-1', now: () => 1_700_000_123_999 });
  w2.close();
  assert.notEqual(w2.path, w.path);
  assert.equal(readdirSync(dir).filter((f) => f.includes('tfevents')).length, 2);

  const python = process.env.PYTHON ?? '/usr/bin/python3';
  const probe = spawnSync(python, ['-c', 'import tensorboard'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    t.diagnostic(
      `skipped the TensorBoard cross-check: ${python} cannot import tensorboard (${(probe.stderr || String(probe.error ?? '')).trim().split('\n').pop()})`,
    );
    return;
  }
  const script = join(dir, 'read.py');
  writeFileSync(
    script,
    [
      'import sys, json',
      'from tensorboard.backend.event_processing import event_accumulator as ea',
      'acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})',
      'acc.Reload()',
      'print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))',
    ].join('\n'),
  );
  const r = spawnSync(python, [script, w.path], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const scalars = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, [number, number][]>;
  assert.equal(scalars['train/loss'].length, 20);
  assert.deepEqual(scalars['train/loss'][3], [4, Math.fround(5 / 4)]);
  assert.deepEqual(scalars['valid/loss'], [[20, 1.75]]);
});
