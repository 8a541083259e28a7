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

/** A micro-batch's tensors crossing to a neighbouring stage: its activations going forward, or their gradient coming back. */
export interface StageTransfer {
  what: 'activation' | 'gradient';
  micro: number;
  peer: 'previous' | 'next';
}

/** One step of a stage's program: a computation of the schedule, or sends and receives that run as one group. */
export type PipelineStep = ScheduleAction | { kind: 'exchange'; sends: StageTransfer[]; receives: StageTransfer[] };

/**
 * A stage's schedule with its transfers in place. Each action receives what it needs just before it runs (a
 * forward the previous stage's activations, a backward the next stage's gradient) and sends what it made just
 * after; a send is held back and goes in one group with the next action's receive when both are with the same
 * neighbour, as Megatron's send_forward_recv_backward and send_backward_recv_forward do.
 *
 * Why: over NCCL a send does not complete until the peer posts its receive, and each rank runs its transfers in
 * order on one stream. In 1F1B's steady state two neighbours send at the same time (stage s its forward of micro
 * m + k, stage s + 1 its backward of micro m): sent separately, each would wait for the other's receive, which
 * comes after its own send. In one group both directions run together. Sends and receives between two stages
 * stay in the same order on both (NCCL matches them in order), whatever the grouping.
 */
export function withTransfers(actions: readonly ScheduleAction[], stage: number, stages: number): PipelineStep[] {
  const first = stage === 0;
  const last = stage === stages - 1;
  const receiveFor = (a: ScheduleAction): StageTransfer | null =>
    a.kind === 'forward'
      ? first
        ? null
        : { what: 'activation', micro: a.micro, peer: 'previous' }
      : last
        ? null
        : { what: 'gradient', micro: a.micro, peer: 'next' };
  const sendAfter = (a: ScheduleAction): StageTransfer | null =>
    a.kind === 'forward'
      ? last
        ? null
        : { what: 'activation', micro: a.micro, peer: 'next' }
      : first
        ? null
        : { what: 'gradient', micro: a.micro, peer: 'previous' };
  const out: PipelineStep[] = [];
  let held: StageTransfer | null = null;
  for (const a of actions) {
    const need = receiveFor(a);
    if (held && need && held.peer === need.peer) out.push({ kind: 'exchange', sends: [held], receives: [need] });
    else {
      if (held) out.push({ kind: 'exchange', sends: [held], receives: [] });
      if (need) out.push({ kind: 'exchange', sends: [], receives: [need] });
    }
    out.push(a);
    held = sendAfter(a);
  }
  if (held) out.push({ kind: 'exchange', sends: [held], receives: [] });
  return out;
}
