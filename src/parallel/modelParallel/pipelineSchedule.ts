/**
 * The 1F1B schedule of one pipeline stage (PipeDream-Flush, Megatron's default without interleaving): stage s
 * first runs pp − s − 1 forward passes (the warm-up that fills the pipeline), then alternates one forward and
 * one backward, then drains the remaining backwards. At most pp − s micro-batches are in flight on stage s, so
 * activation memory is bounded by the pipeline depth, not by the number of micro-batches.
 */
export type ScheduleAction = { kind: 'forward' | 'backward'; micro: number };

export function oneForwardOneBackward(stage: number, stages: number, micros: number): ScheduleAction[] {
  const warmup = Math.min(stages - stage - 1, micros);
  const out: ScheduleAction[] = [];
  let f = 0;
  let b = 0;
  for (; f < warmup; f++) out.push({ kind: 'forward', micro: f });
  while (f < micros) {
    out.push({ kind: 'forward', micro: f++ });
    out.push({ kind: 'backward', micro: b++ });
  }
  while (b < micros) out.push({ kind: 'backward', micro: b++ });
  return out;
}

/** The most micro-batches a schedule holds activations for at once. */
export function peakInFlight(actions: readonly ScheduleAction[]): number {
  let live = 0;
  let peak = 0;
  for (const a of actions) {
    live += a.kind === 'forward' ? 1 : -1;
    peak = Math.max(peak, live);
  }
  return peak;
}
