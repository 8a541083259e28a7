/** @deprecated since 0.2: the launcher is process plumbing and lives in src/runtime/launcher.ts; this path is kept for one release. */
export * from '../runtime/launcher.ts';
