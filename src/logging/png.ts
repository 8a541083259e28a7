/**
 * PNG encoder for 8-bit RGBA images, using only node:zlib: signature, IHDR, one IDAT, IEND.
 * Every row gets filter type 0 (None); deflate still compresses chart images (large flat areas) well,
 * and unfiltered rows keep the encoder simple to verify.
 */
import { deflateSync } from 'node:zlib';
import { writeFileAtomic } from '../io/atomicWrite.ts';
import { crc32 } from './crc.ts';
import type { Raster } from './raster.ts';

export const PNG_SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

/** One chunk: u32 BE length, 4-byte type, data, u32 BE CRC-32 over type and data. */
function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** Encodes `rgba` (width*height*4 bytes, row-major, non-premultiplied) as a PNG file. */
export function encodePng(width: number, height: number, rgba: Uint8Array): Buffer {
  if (rgba.length !== width * height * 4) throw new Error(`encodePng: expected ${width * height * 4} bytes for ${width}x${height} RGBA, got ${rgba.length}`);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // colour type: truecolour with alpha
  ihdr[10] = 0; // compression: deflate
  ihdr[11] = 0; // filter method 0
  ihdr[12] = 0; // no interlace

  const stride = width * 4;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter: None
    raw.set(rgba.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  return Buffer.concat([PNG_SIGNATURE, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', new Uint8Array(0))]);
}

export function rasterToPng(r: Raster): Buffer {
  return encodePng(r.width, r.height, r.data);
}

/** Writes the raster as a PNG file atomically (a viewer never sees half an image). */
export function writePng(path: string, r: Raster): void {
  writeFileAtomic(path, rasterToPng(r));
}
