/**
 * Renders a ChartSpec to pixels: the same layout as the SVG report (see chart.ts), drawn into a
 * Raster and encoded as PNG, for places where HTML is awkward (CI artefacts, chat, papers).
 */
import { join } from 'node:path';
import { layoutChart, SWATCH_W, type ChartLayout, type ChartSpec } from './chart.ts';
import { GLYPH_H } from './font5x7.ts';
import { rasterToPng, writePng } from './png.ts';
import { parseHex, Raster, type Rgba } from './raster.ts';

export interface PlotOptions {
  width?: number;
  height?: number;
  /** Integer pixel scale of the 5x7 font (default 1; 2 for large images). */
  textScale?: number;
  lineWidth?: number;
}

const INK: Rgba = { r: 34, g: 34, b: 34, a: 255 };
const AXIS: Rgba = { r: 153, g: 153, b: 153, a: 255 };
const GRID: Rgba = { r: 230, g: 230, b: 230, a: 255 };
const DASH: [number, number] = [6, 4];

/** The layout renderChart uses for `spec` (plot rectangle, scales), e.g. to locate a curve's pixels. */
export function plotLayout(spec: ChartSpec, opts: PlotOptions = {}): ChartLayout {
  const s = Math.max(1, Math.round(opts.textScale ?? 1));
  return layoutChart(spec, opts.width ?? 760, opts.height ?? 360, { charW: 6 * s, lineH: (GLYPH_H + 5) * s });
}

/** Draws `spec` into a new raster. */
export function renderChart(spec: ChartSpec, opts: PlotOptions = {}): Raster {
  const s = Math.max(1, Math.round(opts.textScale ?? 1));
  const lineWidth = opts.lineWidth ?? 2;
  const tm = { charW: 6 * s, lineH: (GLYPH_H + 5) * s };
  const L = plotLayout(spec, opts);
  const { width, height } = L;
  const { plot } = L;
  const r = new Raster(width, height);
  const glyphH = GLYPH_H * s;

  r.text(plot.x, Math.round((tm.lineH * 2 - glyphH) / 2), spec.title, INK, s);
  for (const t of L.yTicks) {
    r.hline(plot.x, plot.x + plot.w, t.pos, GRID);
    r.hline(plot.x - 4, plot.x, t.pos, AXIS);
    r.text(plot.x - 7 - Raster.textWidth(t.label, s), Math.round(t.pos - glyphH / 2), t.label, INK, s);
  }
  for (const t of L.xTicks) {
    r.vline(t.pos, plot.y, plot.y + plot.h, GRID);
    r.vline(t.pos, plot.y + plot.h, plot.y + plot.h + 4, AXIS);
    r.text(Math.round(t.pos - Raster.textWidth(t.label, s) / 2), plot.y + plot.h + 7, t.label, INK, s);
  }
  // Frame last among the static parts so gridlines do not overdraw it.
  r.hline(plot.x, plot.x + plot.w, plot.y, AXIS);
  r.hline(plot.x, plot.x + plot.w, plot.y + plot.h, AXIS);
  r.vline(plot.x, plot.y, plot.y + plot.h, AXIS);
  r.vline(plot.x + plot.w, plot.y, plot.y + plot.h, AXIS);

  r.text(Math.round(plot.x + plot.w / 2 - Raster.textWidth(spec.xLabel, s) / 2), plot.y + plot.h + 7 + tm.lineH, spec.xLabel, INK, s);
  r.text(Math.round(tm.lineH / 2), Math.round(plot.y + plot.h / 2 + Raster.textWidth(spec.yLabel, s) / 2), spec.yLabel, INK, s, true);

  for (const h of spec.hlines ?? []) {
    const y = L.sy(h.y);
    r.polyline(
      [
        { x: plot.x, y },
        { x: plot.x + plot.w, y },
      ],
      parseHex(h.color),
      lineWidth,
      DASH,
      plot,
    );
  }
  for (const series of spec.series) {
    const pts = series.points.map((p) => ({ x: L.sx(p.x), y: L.sy(p.y) }));
    r.polyline(pts, parseHex(series.color), lineWidth, series.dashed ? DASH : undefined, plot);
  }
  for (const it of L.legend) {
    r.polyline(
      [
        { x: it.x, y: it.y },
        { x: it.x + SWATCH_W, y: it.y },
      ],
      parseHex(it.color),
      3,
      it.dashed ? DASH : undefined,
    );
    r.text(it.x + SWATCH_W + 6, Math.round(it.y - glyphH / 2), it.label, INK, s);
  }
  return r;
}

/** `spec` as PNG bytes. */
export function renderChartPng(spec: ChartSpec, opts: PlotOptions = {}): Buffer {
  return rasterToPng(renderChart(spec, opts));
}

/** File-name stem for a chart title: "KD and CE loss" → "kd-and-ce-loss". */
export function chartFileStem(title: string): string {
  return (
    title
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-|-$/g, '') || 'chart'
  );
}

/** Writes each chart to `<dir>/<stem>.png` and returns the paths (e.g. the charts of runCharts()). */
export function writeChartPngs(dir: string, charts: readonly ChartSpec[], opts: PlotOptions = {}): string[] {
  return charts.map((c) => {
    const path = join(dir, `${chartFileStem(c.title)}.png`);
    writePng(path, renderChart(c, opts));
    return path;
  });
}
