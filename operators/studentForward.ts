/** @deprecated since 0.2: the operator is `attachStudent` (operators/attachStudent.ts); this path is kept for one release. */
export { studentForward } from './attachStudent.ts';
