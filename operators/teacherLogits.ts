/** @deprecated since 0.2: the operator is `teacherTargets` (operators/teacherTargets.ts); this path is kept for one release. */
export { teacherLogits } from './teacherTargets.ts';
