/**
 * The control plane NCCL's unique id travels over (the rendezvous of several nodes) carries a shared secret, on
 * loopback: nodes with the same token join; a node without it, a node with another, and a stranger's forged proof
 * are refused and logged on node 0 while the rendezvous goes on; a node 0 without the token is not believed by a
 * node that has one; and where the token comes from (DISTILL_RENDEZVOUS_TOKEN or a file only its owner reads).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import type { NodeLaunch } from '../../src/runtime/launchEnv.ts';
import { rendezvous, type RendezvousOptions } from '../../src/runtime/rendezvous.ts';
import { LINK_PROTOCOL, type NodeStar } from '../../src/runtime/tcpTransport.ts';
import { newNonce, rendezvousToken } from '../../src/runtime/rendezvousAuth.ts';

const TOKEN = 'a-shared-secret-of-the-run-0123456789';
const RECIPE = '{"name":"r","data":{"seqLength":16}}';

const launch = (nodeRank: number, numNodes: number, masterPort: number, token: string | null, over: Partial<NodeLaunch> = {}): NodeLaunch => ({
  nodeRank,
  numNodes,
  masterAddr: '127.0.0.1',
  masterPort,
  source: 'torchrun',
  joinTimeoutMs: 5000,
  peerTimeoutMs: 2000,
  maxFrameBytes: 1 << 20,
  token,
  ...over,
});
const opts = (l: NodeLaunch, logs: string[] = []): RendezvousOptions => ({
  launch: l,
  recipeJson: RECIPE,
  resumeStep: 0,
  nodeOf: (w) => w,
  log: (line) => logs.push(line),
});

function startMaster(n: number, token: string | null, logs: string[]): { star: Promise<NodeStar>; port: Promise<number> } {
  let onPort: (p: number) => void = () => {};
  const port = new Promise<number>((r) => {
    onPort = r;
  });
  const star = rendezvous({ ...opts(launch(0, n, 0, token), logs), onListening: onPort });
  star.catch(() => {});
  return { star, port };
}

const packr = new Packr({ useRecords: false, moreTypes: false });
const frame = (v: unknown): Buffer => {
  const body = packr.pack(v);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(body.byteLength);
  return Buffer.concat([h, body]);
};

const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
};

test('nodes with the same token join; without it or with another they are refused and logged; the rendezvous goes on', async () => {
  const logs: string[] = [];
  const m = startMaster(2, TOKEN, logs);
  const port = await m.port;
  assert.ok(!logs.some((l) => /no DISTILL_RENDEZVOUS_TOKEN/.test(l)), 'no warning when a token is set');

  await assert.rejects(
    rendezvous(opts(launch(1, 2, port, null))),
    /node 0 ended the rendezvous: node 0 refused this node: node 1 \(.+\) joined without the rendezvous token/,
  );
  await until(
    () => logs.some((l) => /rendezvous: refused a connection from 127\.0\.0\.1:\d+: node 1 .* joined without the rendezvous token/.test(l)),
    logs.join('\n'),
  );

  // Another token: the joiner finds out first (node 0's proof does not match) and leaves.
  await assert.rejects(
    rendezvous(opts(launch(1, 2, port, 'another-secret-of-16-chars-or-more'))),
    /did not prove it knows this node's rendezvous token: node 0 has another DISTILL_RENDEZVOUS_TOKEN/,
  );

  // A stranger that plays the protocol with a forged proof is refused and logged on node 0.
  const raw = connect({ host: '127.0.0.1', port });
  raw.on('error', () => {});
  await new Promise((r) => raw.once('connect', r));
  raw.write(frame({ kind: 'join', protocol: LINK_PROTOCOL, nodeRank: 1, numNodes: 2, recipe: RECIPE, resumeStep: 0, host: 'stranger', nonce: newNonce() }));
  await new Promise((r) => raw.once('data', r)); // the challenge
  raw.write(frame({ kind: 'auth', proof: new Uint8Array(32) }));
  await until(() => logs.some((l) => /refused .*: node 1 \(stranger\) proved another rendezvous token than node 0's/.test(l)), logs.join('\n'));
  // Nor is a frame before the proof read.
  const early = connect({ host: '127.0.0.1', port });
  early.on('error', () => {});
  await new Promise((r) => early.once('connect', r));
  early.write(frame({ kind: 'relay', from: 1, to: 0, frame: new Uint8Array(4) }));
  await until(() => logs.some((l) => /refused .*: it sent 'relay' before proving it knows the rendezvous token/.test(l)), logs.join('\n'));
  raw.destroy();
  early.destroy();

  // The rendezvous is still open: the real node 1 joins.
  const [star0, star1] = await Promise.all([m.star, rendezvous(opts(launch(1, 2, port, TOKEN)))]);
  assert.ok(
    logs.some((l) => /node 1 \(.+\) joined \(2 of 2\)/.test(l)),
    logs.join('\n'),
  );
  star0.close();
  star1.close();
});

test('a node with a token does not believe a node 0 without one; node 0 without a token says anyone can join', async () => {
  const logs: string[] = [];
  const m = startMaster(2, null, logs);
  const port = await m.port;
  assert.ok(
    logs.some((l) => /no DISTILL_RENDEZVOUS_TOKEN: any host that reaches 127\.0\.0\.1:\d+ can join this run/.test(l)),
    logs.join('\n'),
  );
  await assert.rejects(
    rendezvous(opts(launch(1, 2, port, TOKEN))),
    /welcomed node 1 without the rendezvous token this node has: give node 0 the same DISTILL_RENDEZVOUS_TOKEN/,
  );
  await m.star.then(
    (s) => s.close(),
    () => {},
  );
});

test('the token comes from DISTILL_RENDEZVOUS_TOKEN or a file its owner alone reads; a short one is refused', () => {
  assert.equal(rendezvousToken({}), null);
  assert.equal(rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN: TOKEN }), TOKEN);
  assert.throws(() => rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN: 'short' }), /has 5 characters: use at least 16/);
  const dir = mkdtempSync(join(tmpdir(), 'distill-token-'));
  const file = join(dir, 'token');
  writeFileSync(file, `${TOKEN}\n`);
  chmodSync(file, 0o600);
  assert.equal(rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN_FILE: file }), TOKEN);
  chmodSync(file, 0o644);
  assert.throws(() => rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN_FILE: file }), /can be read by other users \(mode 644\): chmod 600 it/);
  assert.throws(() => rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN_FILE: join(dir, 'absent') }), /cannot be read/);
  assert.throws(() => rendezvousToken({ DISTILL_RENDEZVOUS_TOKEN: TOKEN, DISTILL_RENDEZVOUS_TOKEN_FILE: file }), /keep one/);
});
