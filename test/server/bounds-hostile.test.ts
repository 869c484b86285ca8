/**
 * A hostile tenant (its own token) against a gateway process tries every bound
 * at once: 60 KB datagrams flooded at RecvFrom streams that never read (and
 * one subscriber too many), Negotiate loops on pending sockets with fat
 * fallbacks, more pending sockets than allowed, and hundreds of idle data-port
 * connections. Meanwhile a good tenant's transfers are SHA-256 checked, the
 * admin's ListSockets keeps answering, and the gateway's RSS and descriptor
 * count (from /proc/<pid>) stay within stated bounds of their baseline.
 */
import test from 'ava';
import { connect as netConnect, type Socket } from 'node:net';
import { credentials, status } from '@grpc/grpc-js';
import { SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { echoServer, hashUntilEnd, sendRandom, startChildGateway, within } from '../helpers/harness.js';
import { bearer, rpc, rpcError } from '../helpers/rpc.js';
import { fdsOf, flood, portOf, rssOf, stuckReceiver, TCP_OFFER, TOKEN, type StuckReceiver } from '../helpers/tenants.js';

/**
 * Growth of the gateway's RSS over its baseline we accept while under attack:
 * bounded queues measure +50-60 MiB here (V8's young generation grows under
 * allocation pressure, up to 3 x 16 MiB, plus allocator slack); an unbounded
 * queue grows by at least what it received (FLOOD_TARGET_BYTES).
 */
const RSS_HEADROOM_BYTES = 96 << 20;
/** Descriptors over the baseline we accept: the pending-socket and unauthenticated-connection bounds below, plus slack. */
const FD_HEADROOM = 100;
/** Datagram bytes the gateway must have received from the flood, so an unbounded queue would clearly exceed the RSS headroom. */
const FLOOD_TARGET_BYTES = 256 << 20;
const DATAGRAM = 60_000;
/** Upper bounds on the flood, in datagrams and rounds, so the loop always ends. */
const MAX_FLOOD_ROUNDS = 12;
const FLOOD_ROUND = 1000;
const PENDING_PER_IDENTITY = 32;
const IDLE_DATA_CONNECTIONS = 300;
/** Pending sockets the hostile tries to open (only PENDING_PER_IDENTITY may be). */
const PENDING_ATTEMPTS = 300;
/** Negotiate rounds it tries on each: 300 sockets x 24 rounds of 17 fallbacks made ListSockets exceed 4 MiB before the bounds. */
const NEGOTIATE_ROUNDS = 24;

const CONFIG = `
anonymous: { enabled: false }
identities:
  - { name: good, tokens: ["${TOKEN.good}"] }
  - { name: evil, tokens: ["${TOKEN.evil}"] }
  - { name: root, tokens: ["${TOKEN.root}"], admin: true }
rules:
  - { name: loopback, action: allow, destinations: [127.0.0.1], ports: ["1-65535"] }
transports: { enabled: [tcp, grpc] }
limits:
  max_pending_sockets_per_identity: ${PENDING_PER_IDENTITY}
  max_negotiate_rounds: 16
  max_unauthenticated_data_connections_per_peer: 16
telemetry: { log_level: warn }
`;

const BOGUS_OFFERS: TransportOffer[] = Array.from({ length: 16 }, (_, i) => ({ kind: (100 + i) as TransportKind, version: 1, params: undefined }));

test('a hostile tenant trying every bound leaves the gateway within its RSS and fd bounds, the admin served, and the good tenant\'s bytes intact', async (t) => {
  t.timeout(120_000);
  const echo = await echoServer();
  const g = await startChildGateway(CONFIG);
  const pid = g.child.pid!;
  const evil = new SocketGatewayServiceClient(g.target, credentials.createInsecure());
  const good = await SdkGateway.connect(g.target, { token: TOKEN.good });
  const root = await SdkGateway.connect(g.target, { token: TOKEN.root });
  const idle: Socket[] = [];
  const receivers: StuckReceiver[] = [];
  t.teardown(async () => {
    receivers.forEach((r) => r.close());
    idle.forEach((s) => s.destroy());
    evil.close();
    good.close();
    root.close();
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const md = () => bearer(TOKEN.evil);

  /** One good transfer of `bytes` through the gateway, SHA-256 checked both ways. */
  const transfer = async (bytes: number) => {
    const s = await good.connect(echo.uri);
    const got = hashUntilEnd(s);
    const sent = await sendRandom(s, bytes);
    const r = await within(got, 60_000, 'good echo');
    t.is(r.sha256, sent);
    t.is(r.bytes, bytes);
  };

  // Warm-up with the same kinds of load (a transfer, a flood nobody reads, idle
  // data connections, a few negotiations), so the baseline holds a grown heap.
  const goodMd = bearer(TOKEN.good);
  await transfer(32 << 20);
  const warm = await rpc(evil, evil.bind, { uri: 'udp://127.0.0.1:0', offers: [] }, goodMd);
  await rpc(evil, evil.setOption, { socketId: warm.socketId, option: { option: { $case: 'recvBufferBytes', recvBufferBytes: 4 << 20 } } }, goodMd);
  await flood(portOf(warm.localUri), FLOOD_ROUND, DATAGRAM, 4);
  await rpc(evil, evil.closeSocket, { socketId: warm.socketId }, goodMd);
  for (let i = 0; i < 8; i++) {
    const c = await rpc(evil, evil.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, goodMd);
    for (let k = 0; k < 8; k++) await rpc(evil, evil.negotiate, { socketId: c.socketId, offers: [TCP_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, goodMd);
    await rpc(evil, evil.closeSocket, { socketId: c.socketId }, goodMd);
  }
  await new Promise((r) => setTimeout(r, 1000));
  const rss0 = rssOf(pid);
  const fds0 = fdsOf(pid);
  let rssPeak = rss0;
  let fdsPeak = fds0;
  const sampler = setInterval(() => {
    try {
      rssPeak = Math.max(rssPeak, rssOf(pid));
      fdsPeak = Math.max(fdsPeak, fdsOf(pid));
    } catch {
      // the process is gone: the assertions below say so
    }
  }, 20);
  t.teardown(() => clearInterval(sampler));

  const goodDuring = transfer(32 << 20);

  // 1. Idle data-port connections that never send a preamble.
  const [dhost, dport] = [g.data.slice(0, g.data.lastIndexOf(':')), Number(g.data.slice(g.data.lastIndexOf(':') + 1))];
  for (let i = 0; i < IDLE_DATA_CONNECTIONS; i++) {
    const s = netConnect({ host: dhost, port: dport });
    s.on('error', () => {});
    idle.push(s);
  }

  t.log(`phase: rss +${(rssOf(pid) - rss0) >> 20} MiB peak +${(rssPeak - rss0) >> 20} fds ${fdsOf(pid)}`);
  // 2. More pending sockets than allowed.
  let pendingOk = 0;
  let pendingRefused = 0;
  for (let i = 0; i < PENDING_ATTEMPTS; i++) {
    try {
      await rpc(evil, evil.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, md());
      pendingOk++;
    } catch (err) {
      if ((err as { code?: number }).code === status.RESOURCE_EXHAUSTED) pendingRefused++;
      else throw err;
    }
  }
  t.is(pendingOk, PENDING_PER_IDENTITY, 'pending sockets stop at the per-identity bound');
  t.is(pendingRefused, PENDING_ATTEMPTS - PENDING_PER_IDENTITY);

  t.log(`phase: rss +${(rssOf(pid) - rss0) >> 20} MiB peak +${(rssPeak - rss0) >> 20} fds ${fdsOf(pid)}`);
  // 3. Negotiate loops with fat fallbacks on the pending sockets it has.
  const mine = (await root.listSockets('evil')).map((s) => s.socketId);
  let limited = 0;
  await Promise.all(
    mine.map(async (socketId) => {
      for (let i = 0; i < NEGOTIATE_ROUNDS; i++) {
        const e = await rpcError(
          rpc(evil, evil.negotiate, { socketId, offers: BOGUS_OFFERS, failedTransport: TransportKind.TRANSPORT_KIND_TCP, failedReason: DeclineReason.DECLINE_REASON_CONNECT_FAILED, failedDetail: 'z'.repeat(4096) }, md()),
        );
        if (e.code === status.RESOURCE_EXHAUSTED) {
          limited++;
          return;
        }
      }
    }),
  );
  t.is(limited, mine.length, 'every looping socket hit max_negotiate_rounds');
  // The admin's view still fits in its answers.
  const listed = await root.listSockets();
  t.true(listed.length > 0);

  t.log(`phase: rss +${(rssOf(pid) - rss0) >> 20} MiB peak +${(rssPeak - rss0) >> 20} fds ${fdsOf(pid)}`);
  // 4. Datagrams at RecvFrom streams that never read, and one stream too many.
  const bound = await rpc(evil, evil.bind, { uri: 'udp://127.0.0.1:0', offers: [] }, md());
  const uport = portOf(bound.localUri);
  for (let i = 0; i < 4; i++) receivers.push(stuckReceiver(g.target, bound.socketId, TOKEN.evil));
  const fifth = stuckReceiver(g.target, bound.socketId, TOKEN.evil);
  receivers.push(fifth);
  t.is(await within(fifth.status, 10_000, 'fifth RecvFrom'), status.RESOURCE_EXHAUSTED);
  // Let the gateway take datagrams as fast as the flood comes, so the flood arrives.
  await rpc(evil, evil.setOption, { socketId: bound.socketId, option: { option: { $case: 'recvBufferBytes', recvBufferBytes: 4 << 20 } } }, md());
  let received = 0;
  for (let round = 0; round < MAX_FLOOD_ROUNDS && received < FLOOD_TARGET_BYTES; round++) {
    await flood(uport, FLOOD_ROUND, DATAGRAM, 4);
    received = (await rpc(evil, evil.getInfo, { socketId: bound.socketId }, md())).info!.bytesIn;
  }
  t.true(received >= FLOOD_TARGET_BYTES, `the gateway received ${received >> 20} MiB of datagrams (needs ${FLOOD_TARGET_BYTES >> 20} MiB for the test to mean anything)`);

  t.log(`phase: rss +${(rssOf(pid) - rss0) >> 20} MiB peak +${(rssPeak - rss0) >> 20} fds ${fdsOf(pid)}`);
  await goodDuring;
  // And after it all, another good transfer.
  await transfer(8 << 20);
  t.log(`phase: rss +${(rssOf(pid) - rss0) >> 20} MiB peak +${(rssPeak - rss0) >> 20} fds ${fdsOf(pid)}`);
  clearInterval(sampler);
  const rssGrowth = rssPeak - rss0;
  const fdGrowth = fdsPeak - fds0;
  t.log(`gateway RSS ${rss0 >> 20} MiB -> peak ${rssPeak >> 20} MiB (+${rssGrowth >> 20} MiB); fds ${fds0} -> peak ${fdsPeak} (+${fdGrowth}); datagrams received ${received >> 20} MiB`);
  t.true(rssGrowth <= RSS_HEADROOM_BYTES, `RSS grew by ${rssGrowth >> 20} MiB, bound ${RSS_HEADROOM_BYTES >> 20} MiB`);
  t.true(fdGrowth <= FD_HEADROOM, `fds grew by ${fdGrowth}, bound ${FD_HEADROOM}`);
  t.is(g.child.exitCode, null, 'the gateway is still running');
});
