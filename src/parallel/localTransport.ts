/** @deprecated since 0.2: transports live in src/runtime/; this path is kept for one release. */
export * from '../runtime/localTransport.ts';
