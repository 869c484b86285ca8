/**
 * Destinations that misbehave, through a `sockgate serve` child on every
 * plane: one that resets mid-transfer (the client gets a coded reset error),
 * one that stalls (never reads: the writer is held back by backpressure and
 * the gateway's memory stays bounded; once it reads, every byte arrives
 * intact), one that half-closes (its answer and FIN reach the client, which
 * can still send; both directions SHA-256 checked). Afterwards the gateway's
 * descriptors return to the baseline.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { Gateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket, TransportName } from '../../clients/sdk/socket.js';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { hashUntilEnd, sendRandom, startChildGateway, tcpServer, within } from '../helpers/harness.js';
import { ending, fdCount, rssBytes, settle } from './helpers.js';

const PLANES: TransportName[] = shmSupport.available ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'];
/** What a writer tries to push into a stalled destination: far more than any buffer on the way. */
const STALL_PUSH_BYTES = 256 << 20;
/** Gateway RSS growth allowed while a destination stalls (buffers are ~1 MiB per socket and plane; this bounds, with room, what must not grow with the push). */
const STALL_RSS_BOUND = 48 << 20;
/** No 'drain' for this long: the writer is held back (a stall, as far as the test is concerned). */
const HELD_BACK_MS = 1_500;

async function setup(t: { teardown(fn: () => unknown): void }) {
  const g = await startChildGateway();
  const sdk = await Gateway.connect(g.target);
  t.teardown(() => {
    sdk.close();
    g.child.kill('SIGKILL');
  });
  return { g, sdk, pid: g.child.pid! };
}

test('a destination that resets mid-transfer: the client sees a coded reset on every plane; nothing leaks', async (t) => {
  t.timeout(60_000);
  const { sdk, pid } = await setup(t);
  const dest = await tcpServer((c) => {
    let got = 0;
    c.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= 256 * 1024) c.resetAndDestroy();
    });
  });
  t.teardown(() => dest.close());
  // Warm each plane once (lazily opened state), then the baseline.
  for (const plane of PLANES) {
    const s = await sdk.connect(dest.uri, { transports: [plane] });
    s.destroy();
  }
  await new Promise((r) => setTimeout(r, 500));
  const base = fdCount(pid);
  for (const plane of PLANES) {
    const s = await sdk.connect(dest.uri, { transports: [plane] });
    const end = ending(s);
    void sendRandom(s, 64 << 20, 64 * 1024, false).catch(() => {});
    const e = await within(end, 15_000, `${plane}: the reset to reach the client`);
    t.truthy(e.error, `${plane}: an error, not a quiet end`);
    t.is(e.error?.code, 'ERR_SOCKGATE_CONNECTION_RESET', `${plane}: ${e.error?.message}`);
  }
  const after = await settle(() => fdCount(pid), (n) => n === base, 15_000);
  t.is(after, base, "the gateway's descriptors return to the baseline");
});

test('a destination that never reads: the writer is held back, gateway memory stays bounded, then every byte arrives', async (t) => {
  t.timeout(90_000);
  const { sdk, pid } = await setup(t);
  const conns: Socket[] = [];
  const dest = await tcpServer((c) => {
    c.pause();
    conns.push(c);
  });
  t.teardown(() => dest.close());
  for (const plane of PLANES) {
    const s = await sdk.connect(dest.uri, { transports: [plane] });
    s.destroy();
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const c of conns.splice(0)) c.destroy();
  const rss0 = rssBytes(pid);
  const sockets: { s: GatewaySocket; pushed: () => number; done: Promise<string> }[] = [];
  for (const plane of PLANES) {
    const s = await sdk.connect(dest.uri, { transports: [plane] });
    let pushed = 0;
    const hash = createHash('sha256');
    const block = randomBytes(256 * 1024);
    const done = (async () => {
      while (pushed < STALL_PUSH_BYTES) {
        hash.update(block);
        pushed += block.length;
        if (!s.write(block)) await new Promise<void>((r) => s.once('drain', r));
      }
      s.end();
      return hash.digest('hex');
    })();
    sockets.push({ s, pushed: () => pushed, done });
  }
  // Held back: no progress for HELD_BACK_MS on any writer.
  let last = sockets.map((x) => x.pushed());
  for (let i = 0; i < 60; i++) {
    await new Promise((r) => setTimeout(r, HELD_BACK_MS));
    const now = sockets.map((x) => x.pushed());
    if (now.every((v, k) => v === last[k])) break;
    last = now;
  }
  const held = sockets.map((x) => x.pushed());
  t.log(`pushed before being held back (MiB): ${held.map((b, i) => `${PLANES[i]} ${(b / 2 ** 20).toFixed(1)}`).join(', ')}`);
  for (const [i, b] of held.entries()) t.true(b < STALL_PUSH_BYTES, `${PLANES[i]}: the writer is held back`);
  const grew = rssBytes(pid) - rss0;
  t.log(`gateway RSS growth while stalled: ${(grew / 2 ** 20).toFixed(1)} MiB`);
  t.true(grew < STALL_RSS_BOUND, `gateway RSS grew ${(grew / 2 ** 20).toFixed(1)} MiB while ${PLANES.length} destinations stalled`);
  // The destinations read now: everything arrives, nothing lost.
  t.is(conns.length, PLANES.length);
  const received = conns.map((c) => hashUntilEnd(c));
  for (const c of conns) c.resume();
  const sent = await within(Promise.all(sockets.map((x) => x.done)), 60_000, 'the writers to finish');
  const got = await within(Promise.all(received), 30_000, 'the destinations to read everything');
  got.forEach((r, i) => {
    t.is(r.bytes, STALL_PUSH_BYTES, `${PLANES[i]}: byte count`);
    t.is(r.sha256, sent[i], `${PLANES[i]}: bytes intact after the stall`);
  });
});

test('a destination that half-closes: its answer and FIN reach the client, which still sends; both directions intact', async (t) => {
  t.timeout(60_000);
  const { sdk, pid } = await setup(t);
  const answers = new Map<number, { body: Buffer; received: Promise<{ bytes: number; sha256: string }> }>();
  let n = 0;
  const dest = await tcpServer((c) => {
    const body = randomBytes(300 * 1024 + n);
    answers.set(n++, { body, received: hashUntilEnd(c) });
    c.end(body); // answer and FIN at once, then keep reading
  });
  t.teardown(() => dest.close());
  const warm = await tcpServer((c) => c.pipe(c));
  t.teardown(() => warm.close());
  for (const plane of PLANES) (await sdk.connect(warm.uri, { transports: [plane] })).destroy();
  await new Promise((r) => setTimeout(r, 500));
  const base = fdCount(pid);
  for (const [i, plane] of PLANES.entries()) {
    const s = await sdk.connect(dest.uri, { transports: [plane] });
    const got = await within(hashUntilEnd(s), 15_000, `${plane}: the answer and its FIN`);
    const a = answers.get(i)!;
    t.is(got.sha256, createHash('sha256').update(a.body).digest('hex'), `${plane}: answer intact`);
    t.false(s.writableEnded, `${plane}: the client's side is still open`);
    const sent = await sendRandom(s, 2 << 20);
    const r = await within(a.received, 15_000, `${plane}: the destination to read the client's bytes`);
    t.is(r.sha256, sent, `${plane}: bytes sent after the destination's FIN arrive intact`);
    await within(new Promise((r2) => (s.closed ? r2(undefined) : s.once('close', r2))), 10_000, `${plane}: the socket closes`);
  }
  const after = await settle(() => fdCount(pid), (v) => v === base, 15_000);
  t.is(after, base, "the gateway's descriptors return to the baseline");
});
