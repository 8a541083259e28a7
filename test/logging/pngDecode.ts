/**
 * A small PNG decoder for tests (8-bit RGB/RGBA, non-interlaced, all five row filters), written apart
 * from src/logging/png.ts so that the encoder is checked by a second implementation, and so that
 * browser screenshots (which use every filter) can be inspected pixel by pixel.
 */
import assert from 'node:assert/strict';
import * as zlib from 'node:zlib';

export interface DecodedPng {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlace: number;
  chunks: string[];
  /** Inflated IDAT: one filter byte + width*channels bytes per row. */
  raw: Buffer;
  /** Always RGBA, 4 bytes per pixel. */
  rgba: Uint8Array;
}

/** CRC-32 written out bit by bit, independent of src/logging/crc.ts. */
export function crc32Ref(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return (c ^ 0xffffffff) >>> 0;
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

export function decodePng(png: Uint8Array): DecodedPng {
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  let off = 8;
  const chunks: string[] = [];
  const idat: Buffer[] = [];
  let ihdr: Buffer | undefined;
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    assert.equal(buf.readUInt32BE(off + 8 + len), crc32Ref(buf.subarray(off + 4, off + 8 + len)), `${type} CRC`);
    chunks.push(type);
    if (type === 'IHDR') ihdr = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IDAT') idat.push(buf.subarray(off + 8, off + 8 + len));
    off += 12 + len;
  }
  assert.equal(off, buf.length, 'no trailing bytes');
  assert.ok(ihdr, 'IHDR present');
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const bitDepth = ihdr[8];
  const colorType = ihdr[9];
  assert.equal(bitDepth, 8, 'only 8-bit PNGs are decoded here');
  assert.ok(colorType === 2 || colorType === 6, `colour type ${colorType} not supported here`);
  const ch = colorType === 6 ? 4 : 3;
  const stride = width * ch;
  const raw = zlib.inflateSync(Buffer.concat(idat));
  assert.equal(raw.length, (stride + 1) * height, 'inflated IDAT size');
  const rows = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const cur = rows.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? rows.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= ch ? cur[i - ch] : 0;
      const b = prev[i];
      const c = i >= ch ? prev[i - ch] : 0;
      const pred = filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b : filter === 3 ? (a + b) >> 1 : filter === 4 ? paeth(a, b, c) : NaN;
      assert.ok(!Number.isNaN(pred), `row ${y}: bad filter ${filter}`);
      cur[i] = (src[i] + pred) & 255;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let p = 0; p < width * height; p++) {
    rgba[p * 4] = rows[p * ch];
    rgba[p * 4 + 1] = rows[p * ch + 1];
    rgba[p * 4 + 2] = rows[p * ch + 2];
    rgba[p * 4 + 3] = ch === 4 ? rows[p * ch + 3] : 255;
  }
  return { width, height, bitDepth, colorType, interlace: ihdr[12], chunks, raw, rgba };
}

/** [r, g, b, a] at (x, y). */
export function pixel(img: DecodedPng, x: number, y: number): number[] {
  const i = (y * img.width + x) * 4;
  return [...img.rgba.subarray(i, i + 4)];
}

/** Number of pixels within `tol` (per channel) of colour '#rrggbb'. */
export function countColor(img: DecodedPng, hex: string, tol = 0): number {
  const v = parseInt(hex.slice(1), 16);
  const [r, g, b] = [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  let n = 0;
  for (let i = 0; i < img.rgba.length; i += 4) {
    if (Math.abs(img.rgba[i] - r) <= tol && Math.abs(img.rgba[i + 1] - g) <= tol && Math.abs(img.rgba[i + 2] - b) <= tol) n++;
  }
  return n;
}
