/**
 * The line-chart model and its geometry, shared by the SVG report and the PNG renderer so that both
 * draw the same chart: same ranges, ticks, plot rectangle and legend placement. Renderers only map
 * this layout onto their primitives (SVG elements or raster pixels).
 */

export interface Point {
  x: number;
  y: number;
}

export interface Series {
  label: string;
  points: readonly Point[];
  /** CSS hex colour, '#rrggbb'. */
  color: string;
  dashed?: boolean;
}

/** A horizontal reference line across the whole x range, e.g. the teacher's loss. */
export interface HLine {
  label: string;
  y: number;
  color: string;
}

export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  /** The x axis counts something whole (optimizer steps): ticks only at integers, never at 2.5 or 7.5. */
  integerX?: boolean;
  series: readonly Series[];
  hlines?: readonly HLine[];
}

export interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface LegendItem {
  label: string;
  color: string;
  dashed: boolean;
  /** Left end of the swatch and the text baseline row's vertical centre. */
  x: number;
  y: number;
}

export interface Tick {
  value: number;
  /** Pixel position along its axis. */
  pos: number;
  label: string;
}

export interface ChartLayout {
  width: number;
  height: number;
  plot: Rect;
  xTicks: Tick[];
  yTicks: Tick[];
  legend: LegendItem[];
  sx: (x: number) => number;
  sy: (y: number) => number;
  xMin: number;
  xMax: number;
}

/** Text metrics of the renderer: advance width of one character and line height, in pixels. */
export interface TextMetrics {
  charW: number;
  lineH: number;
}

/** Colour-blind-safe palette (Okabe-Ito), in the order runs are assigned colours. */
export const PALETTE = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000'] as const;
export const TEACHER_COLOR = '#777777';

export const SWATCH_W = 22;

/**
 * "Nice" tick values (1, 2, 2.5, 5 × 10^k) covering [min, max] with about `count` ticks,
 * so axis labels are short round numbers rather than arbitrary fractions. With `integer` (an axis of steps) the
 * spacing is a whole 1, 2 or 5 × 10^k, so no tick falls between two steps.
 */
export function niceTicks(min: number, max: number, count = 5, integer = false): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (max === min) {
    const pad = integer ? 1 : Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 1;
    return niceTicks(min - pad, max + pad, count, integer);
  }
  const raw = (max - min) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const multiples = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = Math.max(integer ? 1 : 0, (multiples.find((m) => m * mag >= raw) ?? 10) * mag);
  const first = Math.ceil(min / step - 1e-9) * step;
  const out: number[] = [];
  for (let v = first; v <= max + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : integer ? Math.round(v) : v);
  return out;
}

/**
 * Labels for one axis's ticks, in one format for the whole axis, with as many digits as the tick spacing needs and
 * no more: 6.9076 / 6.9078 / 6.9080 on a nearly flat loss, 12k / 14k for throughput, 2e-4 / 4e-4 for learning
 * rates (scientific when every tick is below 0.01), 0 for zero.
 */
export function tickLabels(values: readonly number[]): string[] {
  if (values.length === 0) return [];
  const step = values.length > 1 ? Math.abs(values[1] - values[0]) : Math.abs(values[0]) || 1;
  const largest = Math.max(...values.map(Math.abs));
  return values.map((v) => formatTick(v, step, largest));
}

/**
 * One tick label, given the spacing of the axis's ticks (`step`) and its largest |value| (`largest`, default |v|):
 * see tickLabels, which is how an axis is labelled.
 */
export function formatTick(v: number, step: number, largest = Math.abs(v)): string {
  if (v === 0) return '0';
  if (largest >= 1e6) return `${trim(v / 1e6, step / 1e6)}M`;
  if (largest >= 1e4) return `${trim(v / 1e3, step / 1e3)}k`;
  if (largest < 1e-2) {
    // Mantissa digits enough to tell ticks `step` apart: 1.05e-4 and 1.10e-4 need two, 2e-4 and 4e-4 none.
    const digits = Math.max(0, Math.min(6, Math.floor(Math.log10(Math.abs(v)) + 1e-9) - Math.floor(Math.log10(step) + 1e-9) + (isRound(step) ? 0 : 1)));
    const [m, e] = v.toExponential(digits).split('e');
    return `${m}e${Number(e)}`;
  }
  return trim(v, step);
}

/** Whether `step` is 1, 2 or 5 × 10^k (so one significant digit tells its multiples apart). */
function isRound(step: number): boolean {
  const m = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
  return [1, 2, 5, 10].some((r) => Math.abs(m - r) < 1e-6);
}

function trim(v: number, step: number): string {
  const decimals = Math.max(0, Math.min(12, -Math.floor(Math.log10(step) + 1e-9)));
  const scaled = step * 10 ** decimals;
  return v.toFixed(Math.min(12, decimals + (Math.abs(scaled - Math.round(scaled)) > 1e-6 ? 1 : 0)));
}

/**
 * Reduces a long series to at most ~`maxPoints` by keeping, per bucket, the first, min, max and last
 * points: the curve keeps its spikes (which averaging would hide) and the file stays small.
 */
export function decimate(points: readonly Point[], maxPoints = 1500): Point[] {
  if (points.length <= maxPoints) return [...points];
  const buckets = Math.max(1, Math.floor(maxPoints / 4));
  const size = points.length / buckets;
  const out: Point[] = [];
  for (let b = 0; b < buckets; b++) {
    const from = Math.floor(b * size);
    const to = Math.min(points.length, Math.floor((b + 1) * size));
    if (to <= from) continue;
    let lo = from;
    let hi = from;
    for (let i = from; i < to; i++) {
      if (points[i].y < points[lo].y) lo = i;
      if (points[i].y > points[hi].y) hi = i;
    }
    for (const i of [...new Set([from, lo, hi, to - 1])].sort((p, q) => p - q)) out.push(points[i]);
  }
  return out;
}

/** Lays the chart out in a `width` × `height` box for a renderer with the given text metrics. */
export function layoutChart(spec: ChartSpec, width: number, height: number, tm: TextMetrics): ChartLayout {
  let xMin = Infinity;
  let xMax = -Infinity;
  let yMin = Infinity;
  let yMax = -Infinity;
  for (const s of spec.series) {
    for (const p of s.points) {
      if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
      xMin = Math.min(xMin, p.x);
      xMax = Math.max(xMax, p.x);
      yMin = Math.min(yMin, p.y);
      yMax = Math.max(yMax, p.y);
    }
  }
  for (const h of spec.hlines ?? []) {
    yMin = Math.min(yMin, h.y);
    yMax = Math.max(yMax, h.y);
  }
  if (!Number.isFinite(xMin)) [xMin, xMax] = [0, 1];
  if (!Number.isFinite(yMin)) [yMin, yMax] = [0, 1];
  if (xMax === xMin) xMax = xMin + 1;
  // Round the y range out to whole tick steps so the top and bottom gridlines frame the data.
  let yTickValues = niceTicks(yMin, yMax, 5);
  if (yTickValues.length >= 2) {
    const ystep = yTickValues[1] - yTickValues[0];
    yMin = Math.floor(yMin / ystep + 1e-9) * ystep;
    yMax = Math.ceil(yMax / ystep - 1e-9) * ystep;
    if (yMax === yMin) yMax = yMin + ystep;
    yTickValues = [];
    for (let i = 0; yMin + i * ystep <= yMax + ystep * 1e-6; i++) {
      const v = yMin + i * ystep;
      yTickValues.push(Math.abs(v) < ystep * 1e-9 ? 0 : v);
    }
  } else if (yMax === yMin) {
    yMin -= 1;
    yMax += 1;
  }

  const legendEntries = [
    ...spec.series.map((s) => ({ label: s.label, color: s.color, dashed: s.dashed ?? false })),
    ...(spec.hlines ?? []).map((h) => ({ label: h.label, color: h.color, dashed: true })),
  ];
  const yTickLabelsW = Math.max(...tickLabels(yTickValues).map((l) => l.length), 1) * tm.charW;
  const left = Math.round(yTickLabelsW + tm.lineH * 1.6 + 10);
  const right = 16;
  const top = Math.round(tm.lineH * 2);
  const inner = width - left - right;

  // Flow legend entries left to right under the x-axis label, wrapping when a row is full.
  const legend: LegendItem[] = [];
  let row = 0;
  let cx = 0;
  for (const e of legendEntries) {
    const w = SWATCH_W + 6 + e.label.length * tm.charW + 18;
    if (cx > 0 && cx + w > inner) {
      row++;
      cx = 0;
    }
    legend.push({ ...e, x: cx, y: row });
    cx += w;
  }
  const legendRows = legendEntries.length > 0 ? row + 1 : 0;
  const bottom = Math.round(tm.lineH * 3.2 + legendRows * tm.lineH * 1.5);
  const plot: Rect = { x: left, y: top, w: inner, h: Math.max(20, height - top - bottom) };
  const legendTop = plot.y + plot.h + tm.lineH * 3.4;
  for (const it of legend) {
    it.x += plot.x;
    it.y = Math.round(legendTop + it.y * tm.lineH * 1.5);
  }

  const sx = (x: number): number => plot.x + ((x - xMin) / (xMax - xMin)) * plot.w;
  const sy = (y: number): number => plot.y + plot.h - ((y - yMin) / (yMax - yMin)) * plot.h;
  const tickList = (values: number[], map: (v: number) => number): Tick[] => {
    const labels = tickLabels(values);
    return values.map((value, i) => ({ value, pos: map(value), label: labels[i] }));
  };
  const xTicks = tickList(
    niceTicks(xMin, xMax, Math.max(2, Math.floor(plot.w / (tm.charW * 10))), spec.integerX).filter((v) => v >= xMin && v <= xMax),
    sx,
  );
  const yTicks = tickList(yTickValues, sy);
  return { width, height, plot, xTicks, yTicks, legend, sx, sy, xMin, xMax };
}
