/**
 * The shared secret of a run of several nodes. Node 0's port is reachable by any host on its network, and what a
 * joined node sends is trusted (its recipe, its frames for the workers), so joins prove they know a token every
 * node was given: DISTILL_RENDEZVOUS_TOKEN, or DISTILL_RENDEZVOUS_TOKEN_FILE naming a file that holds it (readable
 * by its owner only, as ssh asks of its keys).
 *
 * The token never crosses the wire. A joining node sends a fresh nonce with its join; node 0 answers with a nonce
 * of its own and an HMAC-SHA256 of the joiner's nonce (proving it is the real node 0); the joiner answers with an
 * HMAC of node 0's nonce. Only then does node 0 read the join's recipe or forward anything. Fresh nonces on both
 * sides mean a recorded exchange cannot be replayed.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { ConfigError } from '../errors.ts';

export const NONCE_BYTES = 32;

/** Who proves: node 0 to a joiner, or a joiner to node 0 (so that one side's proof is never the other's). */
export type ProofRole = 'node0' | 'joiner';

/** The run's token from the environment, or null when none is set (then any host that reaches node 0 can join). */
export function rendezvousToken(env: Record<string, string | undefined> = process.env): string | null {
  const direct = env.DISTILL_RENDEZVOUS_TOKEN;
  const file = env.DISTILL_RENDEZVOUS_TOKEN_FILE;
  if (direct !== undefined && direct !== '' && file) throw new ConfigError('both DISTILL_RENDEZVOUS_TOKEN and DISTILL_RENDEZVOUS_TOKEN_FILE are set: keep one');
  if (direct !== undefined && direct !== '') return checked(direct, 'DISTILL_RENDEZVOUS_TOKEN');
  if (!file) return null;
  let text: string;
  let mode: number;
  try {
    mode = statSync(file).mode;
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`DISTILL_RENDEZVOUS_TOKEN_FILE=${file} cannot be read: ${(e as Error).message}`);
  }
  if (mode & 0o077)
    throw new ConfigError(`DISTILL_RENDEZVOUS_TOKEN_FILE=${file} can be read by other users (mode ${(mode & 0o777).toString(8)}): chmod 600 it`);
  return checked(text.trim(), `the token in ${file}`);
}

function checked(token: string, where: string): string {
  if (token.length < 16) throw new ConfigError(`${where} has ${token.length} characters: use at least 16 (e.g. \`openssl rand -hex 32\`)`);
  return token;
}

export function newNonce(): Uint8Array {
  return new Uint8Array(randomBytes(NONCE_BYTES));
}

/** HMAC-SHA256 of `nonce` under the token, labelled by who proves. */
export function prove(token: string, role: ProofRole, nonce: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac('sha256', token).update(`distill-rendezvous:${role}:`).update(nonce).digest());
}

/** Whether `proof` is `role`'s proof of `nonce` under the token (compared in constant time). */
export function verifyProof(token: string, role: ProofRole, nonce: Uint8Array, proof: unknown): boolean {
  if (!(proof instanceof Uint8Array) || nonce.length !== NONCE_BYTES) return false;
  const want = prove(token, role, nonce);
  return proof.length === want.length && timingSafeEqual(proof, want);
}
