/**
 * The rendezvous and the TCP links between nodes, in one process on loopback (127.0.0.1, port 0 = a free port):
 * three nodes join and run the same ring all-reduce as on one node; a missing node is named on every node; a
 * differing recipe is refused naming the field; garbage, oversized frames and a silent peer are dropped with an
 * error within the bound.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { Packr } from 'msgpackr';
import type { NodeLaunch } from '../../src/runtime/launchEnv.ts';
import { rendezvous, type RendezvousOptions } from '../../src/runtime/rendezvous.ts';
import { LINK_PROTOCOL, NodeLinkError, TcpTransport, type NodeStar } from '../../src/runtime/tcpTransport.ts';
import { ringAllReduce } from '../../src/parallel/ringAllReduce.ts';

const launch = (nodeRank: number, numNodes: number, masterPort: number, over: Partial<NodeLaunch> = {}): NodeLaunch => ({
  nodeRank,
  numNodes,
  masterAddr: '127.0.0.1',
  masterPort,
  source: 'torchrun',
  joinTimeoutMs: 5000,
  peerTimeoutMs: 2000,
  maxFrameBytes: 1 << 20,
  ...over,
});

function opts(l: NodeLaunch, logs: string[] = [], recipeJson = '{"name":"r","data":{"seqLength":16}}'): RendezvousOptions {
  return { launch: l, recipeJson, resumeStep: 0, nodeOf: (w) => w, log: (line) => logs.push(line) };
}

/** Node 0 on a free port; resolves its port once it listens. */
function startMaster(n: number, over: Partial<NodeLaunch> = {}, logs: string[] = []): { star: Promise<NodeStar>; port: Promise<number> } {
  let onPort: (p: number) => void = () => {};
  const port = new Promise<number>((r) => {
    onPort = r;
  });
  const star = rendezvous({ ...opts(launch(0, n, 0, over), logs), onListening: onPort });
  star.catch(() => {});
  return { star, port };
}

const packr = new Packr({ useRecords: false, moreTypes: false });
function rawFrame(v: unknown): Buffer {
  const body = packr.pack(v);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(body.byteLength);
  return Buffer.concat([h, body]);
}

/** A hand-made node 1 that joins and then does only what the test makes it do. */
async function rawJoin(port: number): Promise<Socket> {
  const s = connect({ host: '127.0.0.1', port });
  await new Promise((r) => s.once('connect', r));
  s.write(
    rawFrame({ kind: 'join', protocol: LINK_PROTOCOL, nodeRank: 1, numNodes: 2, recipe: '{"name":"r","data":{"seqLength":16}}', resumeStep: 0, host: 'raw' }),
  );
  await new Promise((r) => s.once('data', r)); // the welcome
  return s;
}

function failureOf(star: NodeStar): Promise<Error> {
  return new Promise((resolve) => star.attach({ relay: () => {}, failed: resolve, finished: () => {} }));
}

test('three nodes join on loopback and a ring all-reduce over TCP sums exactly', async () => {
  const logs: string[] = [];
  const m = startMaster(3, {}, logs);
  const port = await m.port;
  const stars = await Promise.all([m.star, rendezvous(opts(launch(1, 3, port))), rendezvous(opts(launch(2, 3, port)))]);
  assert.ok(
    logs.some((l) => /node 2 \(.+\) joined \(3 of 3\)/.test(l)),
    logs.join('\n'),
  );
  const transports = stars.map((s) => new TcpTransport(s));
  const n = 1001; // uneven chunks; node 2's frames to node 1 travel through node 0
  const data = transports.map((_, r) => Float32Array.from({ length: n }, (_, i) => (r + 1) * i * 0.5));
  await Promise.all(transports.map((t, r) => ringAllReduce(t, [0, 1, 2], data[r], 7)));
  for (const d of data) for (let i = 0; i < n; i++) assert.equal(d[i], 3 * i, `element ${i}`);
  for (const t of transports) t.close(new Error('done'));
});

test('a node that does not join is named on node 0 and on the nodes that did join', async () => {
  const m = startMaster(3, { joinTimeoutMs: 800 });
  const port = await m.port;
  const t0 = Date.now();
  const joined = rendezvous(opts(launch(1, 3, port, { joinTimeoutMs: 800 })));
  await assert.rejects(m.star, /node rank\(s\) 2 of 3 did not join within 0\.8 s \(joined: 0, 1\)/);
  await assert.rejects(joined, /node 0 ended the rendezvous: .*node rank\(s\) 2 of 3 did not join/);
  assert.ok(Date.now() - t0 < 3000, 'within the bound');
  // Nobody listening: a joining node names the address it could not reach.
  await assert.rejects(
    rendezvous(opts(launch(1, 2, port, { joinTimeoutMs: 600 }))),
    /node 1 of 2 could not reach node 0 at 127\.0\.0\.1:\d+ within 0\.6 s \(last error: .*ECONNREFUSED/,
  );
});

test('node 0 refuses a node running another recipe, naming the field', async () => {
  const m = startMaster(2);
  const port = await m.port;
  const other = rendezvous(opts(launch(1, 2, port), [], '{"name":"r","data":{"seqLength":32}}'));
  await assert.rejects(m.star, /node 1 \(.+\) runs another recipe than node 0: data\.seqLength: 32 there, 16 on node 0/);
  await assert.rejects(other, /runs another recipe/);
});

test('garbage and oversized frames are dropped with an error; the rendezvous goes on', async () => {
  const logs: string[] = [];
  const m = startMaster(2, {}, logs);
  const port = await m.port;
  const http = connect({ host: '127.0.0.1', port });
  http.on('error', () => {});
  http.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const junk = connect({ host: '127.0.0.1', port });
  junk.on('error', () => {});
  junk.write(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1])); // 0xc1 is never valid msgpack
  await new Promise((r) => setTimeout(r, 200));
  const [star0, star1] = await Promise.all([m.star, rendezvous(opts(launch(1, 2, port)))]);
  assert.ok(
    logs.some((l) => /dropped a connection from 127\.0\.0\.1:\d+: it sent a frame of \d+ bytes, over the 65536-byte limit before joining/.test(l)),
    logs.join('\n'),
  );
  assert.ok(
    logs.some((l) => /dropped a connection from .*undecodable/.test(l)),
    logs.join('\n'),
  );
  star0.close();
  star1.close();

  // After the rendezvous, a joined node that sends garbage is dropped and the run fails naming it.
  const m2 = startMaster(2);
  const raw = await rawJoin(await m2.port);
  const failed = failureOf(await m2.star);
  raw.write(rawFrame({ kind: 'relay', from: 1, to: 0 })); // no frame bytes
  assert.match((await failed).message, /lost contact with node 1 \(raw, 127\.0\.0\.1\): it sent a \d+-byte frame that is a malformed relay: dropped/);
  raw.destroy();

  const m3 = startMaster(2, { maxFrameBytes: 4096 });
  const raw3 = await rawJoin(await m3.port);
  const failed3 = failureOf(await m3.star);
  raw3.write(Buffer.from([0, 1, 0, 0])); // announces 65536 bytes
  assert.match((await failed3).message, /sent a frame of 65536 bytes, over the 4096-byte limit \(raise DISTILL_MAX_FRAME_MB/);
  raw3.destroy();
});

test('a silent node (no heartbeats) is declared gone within the peer timeout; a closed one at once', async () => {
  const m = startMaster(2, { peerTimeoutMs: 600 });
  const raw = await rawJoin(await m.port);
  const t0 = Date.now();
  const e = await failureOf(await m.star);
  const took = Date.now() - t0;
  assert.ok(e instanceof NodeLinkError);
  assert.match(
    e.message,
    /lost contact with node 1 \(raw, 127\.0\.0\.1\): it sent nothing for 0\.6 s \(not even a heartbeat\).*running the same command on every node again resumes/,
  );
  assert.ok(took >= 500 && took < 2000, `declared gone after ${took} ms`);
  raw.destroy();

  const m2 = startMaster(2);
  const port = await m2.port;
  const [star0, star1] = await Promise.all([m2.star, rendezvous(opts(launch(1, 2, port)))]);
  const f0 = failureOf(star0);
  const f1 = failureOf(star1);
  star1.abort(new Error('worker 1 was killed by SIGKILL'));
  assert.match((await f0).message, /node 1 failed: node 1: worker 1 was killed by SIGKILL/);
  star0.close();
  // Node 1 learns nothing more (it reported the failure itself); its link is closed by node 0.
  void f1;
  star1.close();
});
