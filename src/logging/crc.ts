/**
 * Table-driven CRC-32 variants for the two file formats this package writes by hand:
 * CRC-32C (Castagnoli) frames TensorBoard event records, CRC-32 (IEEE, as in zlib) checks PNG chunks.
 * Both are the reflected form: init 0xffffffff, final xor 0xffffffff.
 */

function makeTable(reflectedPoly: number): Uint32Array {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ reflectedPoly : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
}

const CASTAGNOLI = makeTable(0x82f63b78);
const IEEE = makeTable(0xedb88320);

function update(table: Uint32Array, crc: number, data: Uint8Array): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32C of `data`; pass a previous result as `crc` to continue over a split buffer. */
export function crc32c(data: Uint8Array, crc = 0): number {
  return update(CASTAGNOLI, crc, data);
}

/** CRC-32 (IEEE 802.3, the one PNG and zlib use); `crc` continues a previous result. */
export function crc32(data: Uint8Array, crc = 0): number {
  return update(IEEE, crc, data);
}

/**
 * TFRecord's masked CRC: a CRC stored next to the data it covers is rotated and offset so that
 * checksumming a buffer that itself contains CRCs does not degenerate.
 */
export function maskCrc32c(crc: number): number {
  return (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0;
}
