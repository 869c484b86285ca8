/**
 * Two hosts over Soft-RoCE (topology b): this file runs in VM b (10.99.0.2)
 * against VM a (node-a.ts: the gateway with rdma on 10.99.0.1, a gateway
 * without rdma, an echo server and a hashing sink). suite.ts runs it; outside
 * the VMs it skips with a message, inside nothing skips.
 *
 * The tests: SDK -> gateway over rdma -> TCP destination, 256 MiB
 * SHA-256 checked; many sockets over one RC connection, and more than its
 * slots over a second one; half-close; gateway ->
 * peer gateway over rdma -> destination; fallbacks (no device on the gateway's
 * side, a forged connect request rejected, a BIND the gateway refuses); a
 * hostile peer writing garbage cursors: only its session ends. Serial, in
 * this order.
 *
 * `rdma link delete` during a transfer is unplug.test.ts (its SDK runs in
 * child processes: this worker holds an rdma context, which would block the
 * delete). suite.ts tells VM a "done" after ava (done.ts).
 */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../../helpers/test-addon.js';
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { credentials } from '@grpc/grpc-js';
import { binding, Pump, rdma, type PumpEvent, type RdmaEvent } from '../../../native/index.js';
import { SocketGatewayServiceClient } from '../../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway, type GatewaySocket } from '../../../clients/sdk/index.js';
import { hashUntilEnd, readAll, sendRandom, startGateway } from '../../helpers/harness.js';
import { rpc } from '../../helpers/rpc.js';
import { A_ADDR, LAB_RULES, metric, metrics, PORTS } from './lab.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1' && process.env['SOCKGATE_VM_NAME'] === 'b';
const GW = `${A_ADDR}:${PORTS.gateway}`;
const PLAIN = `${A_ADDR}:${PORTS.plainGateway}`;
const ECHO = `tcp://${A_ADDR}:${PORTS.echo}`;
const SINK = `tcp://${A_ADDR}:${PORTS.sink}`;
const BIG = Number(process.env['SOCKGATE_RDMA_BIG_BYTES'] || 256 * 1024 * 1024);
const LONG = 600_000;

/** VM a boots beside us: wait until its gateway answers. */
async function gatewayUp(target: string): Promise<SdkGateway> {
  const until = Date.now() + 180_000;
  for (;;) {
    try {
      return await SdkGateway.connect(target, { transports: ['rdma'] }, { deadlineMs: 5_000 });
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
}

/** Upload `n` random bytes to the sink; it answers "<bytes> <sha256>". */
async function upload(sock: GatewaySocket, n: number): Promise<{ sent: string; got: string; bytes: number }> {
  const reply = readAll(sock);
  const sent = await sendRandom(sock, n, 64 * 1024);
  const [bytes, got] = (await reply).toString().trim().split(' ');
  return { sent, got: got ?? '', bytes: Number(bytes) };
}

if (!IN_VM) {
  test.skip('rdma between two hosts: skipped, not inside VM b of the sockgate two-VM lab (suite.ts runs it there)', () => {});
} else {
  let gw: SdkGateway;

  test.before(async () => {
    gw = await gatewayUp(GW);
  });
  test.after.always(async () => {
    await gw?.close();
  });

  test.serial(`SDK -> gateway over rdma -> TCP sink: ${BIG >> 20} MiB, SHA-256 checked; 16 MiB echoed back`, async (t) => {
    t.timeout(LONG);
    const sock = await gw.connect(SINK);
    t.is(sock.transport, 'rdma');
    const t0 = Date.now();
    const r = await upload(sock, BIG);
    t.log(`${BIG >> 20} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s over rdma`);
    t.is(r.bytes, BIG);
    t.is(r.got, r.sent);
    const echo = await gw.connect(ECHO);
    t.is(echo.transport, 'rdma');
    const back = hashUntilEnd(echo);
    const sent = await sendRandom(echo, 16 << 20);
    const got = await back;
    t.is(got.bytes, 16 << 20);
    t.is(got.sha256, sent);
  });

  test.serial('many sockets over one RC connection (one rdma session on the gateway), half-close each way', async (t) => {
    t.timeout(LONG);
    const socks = await Promise.all(Array.from({ length: 12 }, () => gw.connect(ECHO)));
    for (const s of socks) t.is(s.transport, 'rdma');
    t.is(metric(await metrics(), 'sockgate_rdma_sessions'), 1, 'all sockets share the session');
    await Promise.all(
      socks.map(async (s, i) => {
        const back = hashUntilEnd(s);
        // end() after the bytes: the echo server sees EOF, echoes the rest, then ends its side.
        const sent = await sendRandom(s, (1 << 20) + i * 4099);
        const got = await back;
        t.is(got.sha256, sent, `socket ${i}`);
      }),
    );
    // The other direction first: the sink answers only after our FIN, on a half-closed socket.
    const s = await gw.connect(SINK);
    const r = await upload(s, 3 << 20);
    t.is(r.got, r.sent);
  });

  test.serial('more sockets than a session has slots: the 17th on ride an overflow session (a second RC connection), every one SHA-256 checked', async (t) => {
    t.timeout(LONG);
    const before = metric(await metrics(), 'sockgate_rdma_sessions');
    const h = await SdkGateway.connect(GW, { transports: ['rdma'] });
    try {
      // The lab gateway has the default 16 slots per session.
      const socks = await Promise.all(Array.from({ length: 20 }, () => h.connect(ECHO)));
      for (const s of socks) t.is(s.transport, 'rdma');
      t.is(metric(await metrics(), 'sockgate_rdma_sessions') - before, 2, 'two sessions for this client');
      await Promise.all(
        socks.map(async (s, i) => {
          const back = hashUntilEnd(s);
          const sent = await sendRandom(s, (256 << 10) + i * 4099);
          t.is((await back).sha256, sent, `socket ${i}`);
        }),
      );
    } finally {
      await h.close();
    }
  });

  test.serial('gateway -> peer gateway over rdma -> destination (peers rule)', async (t) => {
    t.timeout(LONG);
    const b = await startGateway({ rules: LAB_RULES, peers: [{ match: { cidr: `${A_ADDR}/32` }, via: GW, transports: ['rdma'] }] }, { transports: ['tcp'] });
    try {
      const sock = await b.sdk.connect(ECHO);
      const back = hashUntilEnd(sock);
      const sent = await sendRandom(sock, 8 << 20);
      t.is((await back).sha256, sent);
      const info = await b.sdk.getInfo(sock.socketId).catch(() => undefined);
      if (info) {
        t.truthy(info.peer, 'the socket went through the peer gateway');
        t.is(info.peer?.transport, TransportKind.TRANSPORT_KIND_RDMA);
      } else {
        t.pass('socket gone before GetInfo; routing checked through the peer metrics below');
      }
      t.true(metric(await metrics(), 'sockgate_rdma_sessions') >= 1);
    } finally {
      await b.stop();
    }
  });

  test.serial('fallback: a gateway with no RDMA device on its side declines NO_RDMA_DEVICE and tcp carries the bytes', async (t) => {
    const plain = await SdkGateway.connect(PLAIN, { transports: ['rdma', 'tcp'] });
    try {
      const sock = await plain.connect(ECHO);
      t.is(sock.transport, 'tcp');
      t.like(sock.fallbacks[0], { transport: 'rdma', reason: 'NO_RDMA_DEVICE' });
      const back = hashUntilEnd(sock);
      const sent = await sendRandom(sock, 1 << 20);
      t.is((await back).sha256, sent);
    } finally {
      await plain.close();
    }
  });

  test.serial('a forged connect request is rejected (REJECTED); the gateway keeps serving', async (t) => {
    const events: RdmaEvent[] = [];
    const pump = new Pump((evs: PumpEvent[]) => {
      for (const e of evs) if (e.type === 'rdma') events.push(e);
    });
    try {
      const conn = rdma.connect!(pump.raw, { addr: A_ADDR, port: PORTS.rdma, token: randomBytes(16) });
      const until = Date.now() + 60_000;
      while (!events.some((e) => e.rdma === conn.id && (e.event === 'failed' || e.event === 'established')) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      t.like(events.find((e) => e.rdma === conn.id), { event: 'failed', code: 'REJECTED' });
    } finally {
      pump.close();
    }
    const sock = await gw.connect(ECHO);
    const back = hashUntilEnd(sock);
    const sent = await sendRandom(sock, 1 << 20);
    t.is((await back).sha256, sent);
  });

  test.serial('a BIND the gateway refuses (a token it cannot redeem): that socket falls back to tcp with PEER_DECLINED, the session keeps its first socket', async (t) => {
    t.timeout(LONG);
    const refusedBefore = metric(await metrics(), 'sockgate_rdma_refusals_total', 'reason="token"');
    // hostile 3: the session's connect carries the right token, every later BIND a corrupted one.
    const h = await SdkGateway.connect(GW, { transports: ['rdma', 'tcp'], rdma: { hostile: 3 } });
    try {
      const first = await h.connect(ECHO);
      t.is(first.transport, 'rdma');
      const second = await h.connect(ECHO);
      t.is(second.transport, 'tcp', 'the refused bind fell back before connect() returned');
      t.like(second.fallbacks.find((f) => f.transport === 'rdma'), { reason: 'PEER_DECLINED' });
      t.true(metric(await metrics(), 'sockgate_rdma_refusals_total', 'reason="token"') > refusedBefore, 'the gateway counted the refusal');
      const jobs = [first, second].map(async (s, i) => {
        const back = hashUntilEnd(s);
        const sent = await sendRandom(s, (2 << 20) + i * 8191);
        t.is((await back).sha256, sent, `socket ${i} (${s.transport})`);
      });
      await Promise.all(jobs);
    } finally {
      await h.close();
    }
  });

  test.serial('a hostile peer writing garbage cursors ends only its own session (ERR_SOCKGATE_RDMA_PROTOCOL)', async (t) => {
    t.timeout(LONG);
    const before = metric(await metrics(), 'sockgate_rdma_connection_failures_total', 'ERR_SOCKGATE_RDMA_PROTOCOL');
    // A legitimate socket and token, negotiated the normal way...
    const client = new SocketGatewayServiceClient(GW, credentials.createInsecure());
    const res = await rpc(client, client.connect, {
      uri: ECHO,
      offers: [{ kind: TransportKind.TRANSPORT_KIND_RDMA, version: 1, params: { $case: 'rdma', rdma: { address: '', ringBytes: 65536, sessionId: `hostile${randomBytes(8).toString('hex')}`, preissue: 0 } } }],
      timeoutMs: 0,
      options: [],
    } as never);
    const acc = (res as { negotiation?: { accepted?: { attachToken: Uint8Array; params?: { $case: string; rdma?: { port: number; slot: number; slots: number } } } } }).negotiation?.accepted;
    t.is(acc?.params?.$case, 'rdma');
    const p = acc!.params!.rdma!;
    // ...then a connection that publishes producer cursors beyond the ring.
    const events: RdmaEvent[] = [];
    const pump = new Pump((evs: PumpEvent[]) => {
      for (const e of evs) if (e.type === 'rdma') events.push(e);
    });
    const good = await gw.connect(ECHO);
    const goodBack = hashUntilEnd(good);
    try {
      const conn = rdma.connect!(pump.raw, { addr: A_ADDR, port: p.port, token: acc!.attachToken.subarray(0, 16), slots: p.slots, hostile: 1 });
      const until = Date.now() + 60_000;
      while (!events.some((e) => e.rdma === conn.id && e.event !== 'progress') && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      t.like(events.find((e) => e.rdma === conn.id), { event: 'established' });
      const [fd, other] = binding.socketpair();
      const mine = new Socket({ fd: other, allowHalfOpen: true, readable: true, writable: true });
      mine.on('error', () => {});
      mine.resume();
      conn.link(p.slot, fd);
      mine.write(randomBytes(4096));
      while (!events.some((e) => e.rdma === conn.id && e.event === 'closed') && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      t.like(events.find((e) => e.rdma === conn.id && e.event === 'closed'), { code: 'ERR_SOCKGATE_RDMA_DISCONNECTED' }, 'the gateway dropped the hostile connection');
      mine.destroy();
    } finally {
      pump.close();
      client.close();
    }
    // Our own session never noticed.
    const sent = await sendRandom(good, 2 << 20);
    t.is((await goodBack).sha256, sent);
    const after = metric(await metrics(), 'sockgate_rdma_connection_failures_total', 'ERR_SOCKGATE_RDMA_PROTOCOL');
    t.is(after, before + 1, 'the gateway counted one protocol failure');
  });
}
