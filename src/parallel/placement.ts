/**
 * Where each stage runs. Students: --devices × --num_nodes workers, DP = workers / (TP·PP·CP) (only TP = PP = CP = 1
 * runs today). Teachers: --teacher_devices extra workers per node that run the frozen teacher's forward pass and
 * stream hidden states to the students (student rank r is served by teacher r mod N); 0 runs the teacher inside
 * each student worker. Device indices: students 0..devices−1, teachers devices..devices+N−1.
 */
import type { BackendChoice } from '../backend/select.ts';
import type { DistillationRecipe, ParallelConfig } from '../recipe/config.ts';

/** ParallelConfig plus the teacher's placement (the --teacher_devices flag). */
export interface PlacementConfig extends ParallelConfig {
  teacherDevices?: number;
}

export interface Placement {
  studentWorkers: number;
  teacherWorkers: number;
  dpSize: number;
}

export function teacherDevicesOf(recipe: DistillationRecipe): number {
  return (recipe.parallel as PlacementConfig).teacherDevices ?? 0;
}

/** A copy of the recipe with the teacher on `n` workers of its own. */
export function withTeacherDevices(recipe: DistillationRecipe, n: number): DistillationRecipe {
  const parallel: PlacementConfig = { ...recipe.parallel, teacherDevices: n };
  return { ...recipe, parallel };
}

export function placementOf(recipe: DistillationRecipe): Placement {
  const p = recipe.parallel;
  const studentWorkers = p.devicesPerNode * p.numNodes;
  return { studentWorkers, teacherWorkers: teacherDevicesOf(recipe), dpSize: studentWorkers / (p.tpSize * p.ppSize * p.cpSize) };
}

/** True when the run needs worker processes (more than one student, or a teacher of its own). */
export function needsWorkers(recipe: DistillationRecipe): boolean {
  const p = placementOf(recipe);
  return p.studentWorkers > 1 || p.teacherWorkers > 0;
}

export function teacherWorkerFor(dpRank: number, p: Placement): number | null {
  return p.teacherWorkers > 0 ? p.studentWorkers + (dpRank % p.teacherWorkers) : null;
}

/**
 * Environment that pins a worker to its device. tfjs-node reads CUDA_VISIBLE_DEVICES when it loads, so it is set
 * at fork time (mapped through the launcher's own CUDA_VISIBLE_DEVICES, if any); the cuda backend opens device 0
 * of what it leaves, so it is pinned the same way (NCCL refuses two ranks on one GPU). WebGPU is pinned by adapter
 * index instead (selectBackend's adapterIndex); wasm and cpu are one core per process by construction.
 */
export function deviceEnv(backend: BackendChoice, deviceIndex: number, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  if (backend !== 'tensorflow' && backend !== 'cuda' && backend !== 'auto') return {};
  const visible = env.CUDA_VISIBLE_DEVICES?.split(',').filter((s) => s.trim() !== '');
  return { CUDA_VISIBLE_DEVICES: visible && visible.length ? visible[deviceIndex % visible.length] : String(deviceIndex) };
}
