/**
 * PNG output: the file is decoded by an independent decoder (pngDecode.ts: signature, IHDR, chunk CRCs,
 * IDAT inflated), and drawn lines and text are found at the pixels where they belong.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from '../../src/logging/crc.ts';
import { GLYPH_H, GLYPH_W, glyph } from '../../src/logging/font5x7.ts';
import { encodePng, rasterToPng } from '../../src/logging/png.ts';
import { plotLayout, renderChartPng } from '../../src/logging/plot.ts';
import { parseHex, Raster } from '../../src/logging/raster.ts';
import type { ChartSpec } from '../../src/logging/chart.ts';
import { crc32Ref, decodePng, pixel } from './pngDecode.ts';

const px = pixel;

test('CRC-32 known answer', () => {
  assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
  assert.equal(crc32(new TextEncoder().encode('IEND')), 0xae426082, 'the CRC every PNG ends with');
  const bytes = Uint8Array.from({ length: 999 }, (_, i) => (i * 131) & 255);
  assert.equal(crc32(bytes), crc32Ref(bytes));
});

test('encodePng: header, chunk CRCs and IDAT size', () => {
  const w = 7;
  const h = 5;
  const rgba = Uint8Array.from({ length: w * h * 4 }, (_, i) => (i * 37) & 255);
  const img = decodePng(encodePng(w, h, rgba));
  assert.deepEqual(img.chunks, ['IHDR', 'IDAT', 'IEND']);
  assert.equal(img.width, w);
  assert.equal(img.height, h);
  assert.equal(img.bitDepth, 8);
  assert.equal(img.colorType, 6, 'RGBA');
  assert.equal(img.interlace, 0);
  assert.equal(img.raw.length, w * h * 4 + h, 'one filter byte per row plus the pixels');
  for (let y = 0; y < h; y++) assert.equal(img.raw[y * (w * 4 + 1)], 0, `row ${y} uses filter None`);
  assert.deepEqual(img.rgba, rgba);
  assert.throws(() => encodePng(w, h, rgba.subarray(1)), /expected 140 bytes/);
});

test('a drawn line appears where expected, anti-aliased, and nowhere else', () => {
  const r = new Raster(100, 60);
  const red = parseHex('#ff0000');
  r.polyline(
    [
      { x: 10, y: 30 },
      { x: 90, y: 30 },
    ],
    red,
    2,
  );
  r.polyline(
    [
      { x: 10, y: 10 },
      { x: 50, y: 50 },
    ],
    parseHex('#0000ff'),
    3,
  );
  const img = decodePng(rasterToPng(r));

  // Width 2 centred on y = 30 covers pixel rows 29 and 30 fully.
  for (const x of [15, 50, 85]) {
    assert.deepEqual(px(img, x, 29), [255, 0, 0, 255]);
    assert.deepEqual(px(img, x, 30), [255, 0, 0, 255]);
    assert.deepEqual(px(img, x, 26), [255, 255, 255, 255]);
    assert.deepEqual(px(img, x, 33), [255, 255, 255, 255]);
  }
  assert.deepEqual(px(img, 95, 30), [255, 255, 255, 255], 'nothing past the end point');
  // The diagonal passes through (30, 30): blue there, with partially covered (blended) pixels at its edge.
  assert.deepEqual(px(img, 20, 20).slice(0, 3), [0, 0, 255]);
  assert.deepEqual(px(img, 40, 10), [255, 255, 255, 255]);
  let partial = 0;
  for (let x = 5; x < 55; x++) {
    const [pr, , pb] = px(img, x, 15);
    if (pb === 255 && pr > 0 && pr < 255) partial++;
  }
  assert.ok(partial >= 1, 'edge pixels are blended (anti-aliasing)');
});

test('5x7 text lands on the glyph bitmap', () => {
  const r = new Raster(20, 10);
  const ink = parseHex('#000000');
  r.text(2, 1, '7', ink);
  const rows = glyph('7');
  for (let gy = 0; gy < GLYPH_H; gy++) {
    for (let gx = 0; gx < GLYPH_W; gx++) {
      const on = ((rows[gy] >> (GLYPH_W - 1 - gx)) & 1) === 1;
      assert.equal(r.getPixel(2 + gx, 1 + gy).r, on ? 0 : 255, `pixel ${gx},${gy}`);
    }
  }
  assert.equal(Raster.textWidth('7'), 5);
  assert.equal(Raster.textWidth('12', 2), 22);
});

test('chart PNG: each series is drawn at its data position in the plot area', () => {
  const spec: ChartSpec = {
    title: 'Training loss',
    xLabel: 'step',
    yLabel: 'loss',
    series: [
      { label: 'KD student', color: '#0072b2', points: Array.from({ length: 101 }, (_, i) => ({ x: i * 10, y: 2 })) },
      { label: 'CE-only student', color: '#d55e00', points: Array.from({ length: 101 }, (_, i) => ({ x: i * 10, y: 4 - i * 0.04 })) },
    ],
    hlines: [{ label: 'teacher', y: 1, color: '#777777' }],
  };
  const opts = { width: 640, height: 320 };
  const img = decodePng(renderChartPng(spec, opts));
  assert.equal(img.width, 640);
  assert.equal(img.height, 320);
  const L = plotLayout(spec, opts);
  const isColor = (x: number, y: number, hex: string): boolean => {
    const c = parseHex(hex);
    const [r, g, b] = px(img, x, y);
    return r === c.r && g === c.g && b === c.b;
  };
  const near = (x: number, yc: number, hex: string): boolean => [-1, 0, 1].some((d) => isColor(x, Math.round(yc) + d, hex));

  // The flat series sits at sy(2) all along; the ramp crosses it at step 500.
  for (const step of [100, 300, 700, 900]) {
    const x = Math.round(L.sx(step));
    assert.ok(near(x, L.sy(2), '#0072b2'), `KD curve at step ${step}`);
    assert.ok(near(x, L.sy(4 - (step / 10) * 0.04), '#d55e00'), `CE curve at step ${step}`);
  }
  let blue = 0;
  let orange = 0;
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      if (isColor(x, y, '#0072b2')) blue++;
      if (isColor(x, y, '#d55e00')) orange++;
    }
  }
  assert.ok(blue > L.plot.w, `blue line pixels: ${blue}`);
  assert.ok(orange > L.plot.w, `orange line pixels: ${orange}`);
  // The dashed teacher line: some grey pixels on its row, but gaps too.
  const row = Math.round(L.sy(1));
  let grey = 0;
  for (let x = Math.ceil(L.plot.x) + 2; x < L.plot.x + L.plot.w - 2; x++) if (near(x, row, '#777777')) grey++;
  assert.ok(grey > L.plot.w * 0.4 && grey < L.plot.w * 0.8, `dashed line covers part of its row: ${grey}/${L.plot.w}`);
});
