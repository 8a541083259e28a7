/**
 * A minimal RGBA raster with the drawing primitives a line chart needs: filled rectangles,
 * anti-aliased thick polylines (optionally dashed) and 5x7 bitmap text. No dependencies.
 */
import { GLYPH_H, GLYPH_W, glyph } from './font5x7.ts';

export interface Rgba {
  r: number;
  g: number;
  b: number;
  /** 0..255 */
  a: number;
}

export interface ClipRect {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** '#rrggbb' or '#rgb' → opaque colour. */
export function parseHex(hex: string, alpha = 255): Rgba {
  let h = hex.replace(/^#/, '');
  if (h.length === 3) h = [...h].map((c) => c + c).join('');
  if (!/^[0-9a-fA-F]{6}$/.test(h)) throw new Error(`not a #rrggbb colour: ${hex}`);
  const v = parseInt(h, 16);
  return { r: (v >> 16) & 255, g: (v >> 8) & 255, b: v & 255, a: alpha };
}

export class Raster {
  readonly data: Uint8Array;

  constructor(
    readonly width: number,
    readonly height: number,
    background: Rgba = { r: 255, g: 255, b: 255, a: 255 },
  ) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
      throw new Error(`raster size must be positive integers, got ${width}x${height}`);
    }
    this.data = new Uint8Array(width * height * 4);
    for (let i = 0; i < this.data.length; i += 4) {
      this.data[i] = background.r;
      this.data[i + 1] = background.g;
      this.data[i + 2] = background.b;
      this.data[i + 3] = background.a;
    }
  }

  getPixel(x: number, y: number): Rgba {
    const i = (y * this.width + x) * 4;
    return { r: this.data[i], g: this.data[i + 1], b: this.data[i + 2], a: this.data[i + 3] };
  }

  /** Source-over compositing of `c` with extra `coverage` (0..1, the anti-aliasing weight). */
  blend(x: number, y: number, c: Rgba, coverage = 1): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const a = (c.a / 255) * Math.min(1, Math.max(0, coverage));
    if (a <= 0) return;
    const i = (y * this.width + x) * 4;
    const d = this.data;
    const da = d[i + 3] / 255;
    const oa = a + da * (1 - a);
    const mix = (s: number, t: number): number => Math.round((s * a + t * da * (1 - a)) / oa);
    d[i] = mix(c.r, d[i]);
    d[i + 1] = mix(c.g, d[i + 1]);
    d[i + 2] = mix(c.b, d[i + 2]);
    d[i + 3] = Math.round(oa * 255);
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgba): void {
    const x0 = Math.max(0, Math.round(x));
    const y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w));
    const y1 = Math.min(this.height, Math.round(y + h));
    for (let py = y0; py < y1; py++) for (let px = x0; px < x1; px++) this.blend(px, py, c);
  }

  /** 1-pixel crisp horizontal or vertical line, for axes, ticks and gridlines. */
  hline(x0: number, x1: number, y: number, c: Rgba): void {
    this.fillRect(Math.min(x0, x1), Math.round(y), Math.abs(x1 - x0) + 1, 1, c);
  }

  vline(x: number, y0: number, y1: number, c: Rgba): void {
    this.fillRect(Math.round(x), Math.min(y0, y1), 1, Math.abs(y1 - y0) + 1, c);
  }

  /**
   * Anti-aliased polyline of the given width. Coverage is the distance from each pixel centre to the
   * nearest segment, accumulated as a per-pixel maximum and blended once, so joints between segments
   * are not painted twice (which would show as darker dots). `dash` = [on, off] lengths in pixels.
   * NaN points break the line.
   */
  polyline(points: readonly { x: number; y: number }[], c: Rgba, width = 2, dash?: readonly [number, number], clip?: ClipRect): void {
    const cov = new Map<number, number>();
    const half = width / 2;
    const cx0 = clip ? Math.max(0, Math.floor(clip.x)) : 0;
    const cy0 = clip ? Math.max(0, Math.floor(clip.y)) : 0;
    const cx1 = clip ? Math.min(this.width - 1, Math.ceil(clip.x + clip.w)) : this.width - 1;
    const cy1 = clip ? Math.min(this.height - 1, Math.ceil(clip.y + clip.h)) : this.height - 1;

    const segment = (ax: number, ay: number, bx: number, by: number): void => {
      const minX = Math.max(cx0, Math.floor(Math.min(ax, bx) - half - 1));
      const maxX = Math.min(cx1, Math.ceil(Math.max(ax, bx) + half + 1));
      const minY = Math.max(cy0, Math.floor(Math.min(ay, by) - half - 1));
      const maxY = Math.min(cy1, Math.ceil(Math.max(ay, by) + half + 1));
      const dx = bx - ax;
      const dy = by - ay;
      const len2 = dx * dx + dy * dy;
      for (let py = minY; py <= maxY; py++) {
        for (let px = minX; px <= maxX; px++) {
          // Pixel (px, py) covers [px, px+1) × [py, py+1); sample its centre.
          const qx = px + 0.5 - ax;
          const qy = py + 0.5 - ay;
          const t = len2 > 0 ? Math.max(0, Math.min(1, (qx * dx + qy * dy) / len2)) : 0;
          const ex = qx - t * dx;
          const ey = qy - t * dy;
          const k = half + 0.5 - Math.sqrt(ex * ex + ey * ey);
          if (k <= 0) continue;
          const idx = py * this.width + px;
          const v = Math.min(1, k);
          if (v > (cov.get(idx) ?? 0)) cov.set(idx, v);
        }
      }
    };

    // Walk the polyline, tracking distance travelled so dashes continue across vertices.
    let travelled = 0;
    for (let i = 1; i < points.length; i++) {
      const a = points[i - 1];
      const b = points[i];
      if (![a.x, a.y, b.x, b.y].every(Number.isFinite)) continue;
      const segLen = Math.hypot(b.x - a.x, b.y - a.y);
      if (!dash) {
        segment(a.x, a.y, b.x, b.y);
        continue;
      }
      const period = dash[0] + dash[1];
      let s = 0;
      while (s < segLen) {
        const phase = (travelled + s) % period;
        const on = phase < dash[0];
        const step = Math.min(segLen - s, on ? dash[0] - phase : period - phase);
        if (on && segLen > 0) {
          const t0 = s / segLen;
          const t1 = (s + step) / segLen;
          segment(a.x + (b.x - a.x) * t0, a.y + (b.y - a.y) * t0, a.x + (b.x - a.x) * t1, a.y + (b.y - a.y) * t1);
        }
        s += Math.max(step, 1e-6);
      }
      travelled += segLen;
    }
    if (points.length === 1 && Number.isFinite(points[0].x) && Number.isFinite(points[0].y)) segment(points[0].x, points[0].y, points[0].x, points[0].y);
    for (const [idx, v] of cov) this.blend(idx % this.width, Math.floor(idx / this.width), c, v);
  }

  /** Width in pixels of `text` at `scale` (5 px glyph + 1 px spacing per character). */
  static textWidth(text: string, scale = 1): number {
    return text.length === 0 ? 0 : (text.length * (GLYPH_W + 1) - 1) * scale;
  }

  /** Draws `text` with its top-left corner at (x, y); `vertical` rotates it 90° counter-clockwise (bottom-to-top). */
  text(x: number, y: number, text: string, c: Rgba, scale = 1, vertical = false): void {
    const x0 = Math.round(x);
    const y0 = Math.round(y);
    let pen = 0;
    for (const ch of text) {
      const rows = glyph(ch);
      for (let gy = 0; gy < GLYPH_H; gy++) {
        for (let gx = 0; gx < GLYPH_W; gx++) {
          if (!((rows[gy] >> (GLYPH_W - 1 - gx)) & 1)) continue;
          const u = (pen + gx) * scale;
          const v = gy * scale;
          if (vertical) this.fillRect(x0 + v, y0 - u - scale, scale, scale, c);
          else this.fillRect(x0 + u, y0 + v, scale, scale, c);
        }
      }
      pen += GLYPH_W + 1;
    }
  }
}
