/**
 * Every per-socket and per-identity resource has a bound in bytes and counts
 * (issue 12): UDP queues in bytes and datagrams, RecvFrom subscribers per
 * socket, Negotiate rounds and fallbacks per socket, a socket's pending time
 * from its creation, pending sockets per identity and in total, listen
 * backlogs per identity, ListSockets in pages, undecodable requests as
 * INVALID_ARGUMENT. Each against an in-process gateway on loopback; the
 * data-port bounds are in bounds-dataport.test.ts, the hostile tenant against
 * a gateway process in bounds-hostile.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { createSocket } from 'node:dgram';
import { credentials, status } from '@grpc/grpc-js';
import { AdminServiceClient, SocketGatewayServiceClient, SocketInfo, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { DatagramSocket, type GatewaySocket } from '../../server/socket-table.js';
import { listSocketsPage, MAX_LIST_RESPONSE_BYTES } from '../../server/list-sockets.js';
import { encodePreamble, AttachStatus } from '../../proto/wire.js';
import { echoServer, startGateway, within, type TestGateway } from '../helpers/harness.js';
import { bearer, callRaw, dataConnect, eventually, metricSum, rawClient, rpc, rpcError, scrape } from '../helpers/rpc.js';
import { datagram, flood, isIntact, portOf, recvFrom, stuckReceiver, tenantConfig, TCP_OFFER, TOKEN } from '../helpers/tenants.js';

type Echo = Awaited<ReturnType<typeof echoServer>>;

interface World {
  gw: TestGateway;
  echo: Echo;
  sock: SocketGatewayServiceClient;
  admin: AdminServiceClient;
}

async function world(t: ExecutionContext, limits: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<World> {
  const echo = await echoServer();
  const gw = await startGateway({ ...tenantConfig(limits), ...extra }, { token: TOKEN.root });
  const sock = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  const admin = new AdminServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    sock.close();
    admin.close();
    await gw.stop();
    await echo.close();
  });
  return { gw, echo, sock, admin };
}

const EVIL = () => bearer(TOKEN.evil);
const GOOD = () => bearer(TOKEN.good);

async function bindUdp(w: World, md = EVIL()): Promise<{ socketId: string; port: number }> {
  const r = await rpc(w.sock, w.sock.bind, { uri: 'udp://127.0.0.1:0', offers: [] }, md);
  return { socketId: r.socketId, port: portOf(r.localUri) };
}

/** RecvFrom streams subscribed to `s` (private state, read for the test's synchronisation only). */
function subscribers(s: DatagramSocket): number {
  return (s as unknown as { receivers: Set<unknown> }).receivers.size;
}

function datagramSocket(w: World, id: string): DatagramSocket {
  const s = w.gw.gateway.table.list().find((x) => x.id === id);
  if (!(s instanceof DatagramSocket)) throw new Error(`no datagram socket ${id}`);
  return s;
}

test('a RecvFrom reader that never reads holds at most udp_queue_bytes of datagrams; the rest are dropped and counted; what it then reads is intact', async (t) => {
  const QUEUE = 256 * 1024;
  const w = await world(t, { udp_queue_bytes: QUEUE, udp_queue_datagrams: 1024 });
  const { socketId, port } = await bindUdp(w);
  const r = stuckReceiver(w.gw.target, socketId, TOKEN.evil);
  t.teardown(() => r.close());
  const s = datagramSocket(w, socketId);
  t.true(await eventually(() => subscribers(s) === 1, 5_000));
  let peak = 0;
  const watch = setInterval(() => (peak = Math.max(peak, s.bufferedBytes())), 2);
  // 60 KB datagrams at a reader that takes nothing, until the bound drops some (at most 10 x 200 of them).
  await rpc(w.sock, w.sock.setOption, { socketId, option: { option: { $case: 'recvBufferBytes', recvBufferBytes: 4 << 20 } } }, EVIL());
  for (let round = 0; round < 10 && s.dropped === 0; round++) await flood(port, 200, 60_000, 4);
  await new Promise((res) => setTimeout(res, 200));
  clearInterval(watch);
  peak = Math.max(peak, s.bufferedBytes());
  t.true(peak <= QUEUE, `queued ${peak} bytes, bound ${QUEUE}`);
  t.true(peak > QUEUE - 60_000, `the stalled reader's queue filled up (${peak} bytes)`);
  t.true(s.dropped > 0);
  const text = await scrape(w.gw.gateway.addresses.metrics!);
  t.true(metricSum(text, 'sockgate_datagrams_dropped_total', { reason: 'queue_full' }) > 0, 'drops are counted');
  // A reader that reads (beside the stalled one) gets whole, byte-exact datagrams.
  r.close();
  t.true(await eventually(() => subscribers(s) === 0, 5_000));
  const reader = recvFrom(w.sock, socketId, EVIL(), true);
  t.teardown(() => reader.call.cancel());
  t.true(await eventually(() => subscribers(s) === 1, 5_000));
  const tx = createSocket('udp4');
  for (let i = 0; i < 5; i++) await new Promise<void>((res) => tx.send(datagram(1000 + i, 60_000), port, '127.0.0.1', () => res()));
  tx.close();
  t.true(await eventually(() => reader.got.length >= 1, 5_000), 'a reading subscriber gets datagrams');
  t.true(reader.got.every(isIntact), 'SHA-256-derived contents intact');
});

test('the queue is bounded in datagrams too (udp_queue_datagrams), for small datagrams', async (t) => {
  const w = await world(t, { udp_queue_datagrams: 8 });
  const { socketId, port } = await bindUdp(w);
  const r = stuckReceiver(w.gw.target, socketId, TOKEN.evil);
  t.teardown(() => r.close());
  const s = datagramSocket(w, socketId);
  t.true(await eventually(() => subscribers(s) === 1, 5_000));
  let peak = 0;
  const watch = setInterval(() => (peak = Math.max(peak, s.queuedDatagrams)), 1);
  // 64 KiB of flow-control window take ~600 of them; then the queue backs up. Flood until it has (bounded).
  await rpc(w.sock, w.sock.setOption, { socketId, option: { option: { $case: 'recvBufferBytes', recvBufferBytes: 4 << 20 } } }, EVIL());
  for (let round = 0; round < 10 && s.dropped === 0; round++) await flood(port, 1000, 100, 100);
  await new Promise((res) => setTimeout(res, 200));
  clearInterval(watch);
  peak = Math.max(peak, s.queuedDatagrams);
  t.true(peak <= 8, `queued ${peak} datagrams, bound 8`);
  t.true(peak > 0, 'the queue was used');
  t.true(s.dropped > 0, 'over the bound, datagrams are dropped');
});

test('queued datagram bytes are bounded per identity and gateway-wide too (udp_queue_bytes_per_identity, _total): more sockets do not multiply the bound', async (t) => {
  const PER_IDENTITY = 300 * 1024;
  const TOTAL = 500 * 1024;
  const w = await world(t, { udp_queue_bytes: 256 * 1024, udp_queue_bytes_per_identity: PER_IDENTITY, udp_queue_bytes_total: TOTAL });
  const stalled = async (md: ReturnType<typeof bearer>, token: string) => {
    const b = await bindUdp(w, md);
    const r = stuckReceiver(w.gw.target, b.socketId, token);
    t.teardown(() => r.close());
    const s = datagramSocket(w, b.socketId);
    t.true(await eventually(() => subscribers(s) === 1, 5_000));
    await rpc(w.sock, w.sock.setOption, { socketId: b.socketId, option: { option: { $case: 'recvBufferBytes', recvBufferBytes: 4 << 20 } } }, md);
    for (let round = 0; round < 10 && s.dropped === 0; round++) await flood(b.port, 50, 60_000, 4);
    return s;
  };
  const evil = [await stalled(EVIL(), TOKEN.evil), await stalled(EVIL(), TOKEN.evil), await stalled(EVIL(), TOKEN.evil)];
  const evilBytes = evil.reduce((n, s) => n + s.bufferedBytes(), 0);
  t.true(evilBytes <= PER_IDENTITY, `the hostile identity holds ${evilBytes} bytes over 3 sockets, bound ${PER_IDENTITY}`);
  t.true(evil.every((s) => s.dropped > 0));
  const good = await stalled(GOOD(), TOKEN.good);
  t.true(good.bufferedBytes() > 0, 'another identity still gets a queue');
  t.true(evilBytes + good.bufferedBytes() <= TOTAL, `the gateway holds ${evilBytes + good.bufferedBytes()} bytes, bound ${TOTAL}`);
});

test('RecvFrom subscribers per socket are bounded (max_recv_subscribers): one more is RESOURCE_EXHAUSTED; a freed place is taken again', async (t) => {
  const w = await world(t, { max_recv_subscribers: 4 });
  const { socketId, port } = await bindUdp(w);
  const rs = [0, 1, 2, 3].map(() => recvFrom(w.sock, socketId, EVIL(), true));
  t.teardown(() => rs.forEach((r) => r.call.cancel()));
  const s = datagramSocket(w, socketId);
  t.true(await eventually(() => subscribers(s) === 4, 5_000));
  const fifth = recvFrom(w.sock, socketId, EVIL(), true);
  const st = await within(fifth.status, 5_000, 'fifth RecvFrom');
  t.is(st.code, status.RESOURCE_EXHAUSTED);
  t.regex(st.details, /max_recv_subscribers/);
  t.is(st.metadata.get('sockgate-error-code')[0], 'ERR_SOCKGATE_LIMIT_EXCEEDED');
  rs[0]!.call.cancel();
  t.true(await eventually(() => subscribers(s) === 3, 5_000));
  const again = recvFrom(w.sock, socketId, EVIL(), true);
  t.teardown(() => again.call.cancel());
  t.true(await eventually(() => subscribers(s) === 4, 5_000));
  const tx = createSocket('udp4');
  await new Promise<void>((res) => tx.send(datagram(7, 1200), port, '127.0.0.1', () => res()));
  tx.close();
  t.true(await eventually(() => again.got.length === 1, 5_000), 'the new subscriber receives');
  t.true(isIntact(again.got[0]!));
});

test('undecodable requests are INVALID_ARGUMENT with ERR_SOCKGATE_INVALID_ARGUMENT on unary, server-streaming, bidi and admin calls', async (t) => {
  const w = await world(t);
  const client = rawClient(w.gw.target);
  t.teardown(() => client.close());
  // Field 1, length-delimited, claims 5 bytes and carries 1: not a protobuf message.
  const bad = Buffer.from([0x0a, 0x05, 0x61]);
  const calls = [
    { path: '/sockgate.v1.SocketGatewayService/Connect', kind: 'unary' as const },
    { path: '/sockgate.v1.SocketGatewayService/Negotiate', kind: 'unary' as const },
    { path: '/sockgate.v1.SocketGatewayService/RecvFrom', kind: 'server' as const },
    { path: '/sockgate.v1.SocketGatewayService/Accept', kind: 'server' as const },
    { path: '/sockgate.v1.SocketGatewayService/Data', kind: 'bidi' as const },
    { path: '/sockgate.v1.AdminService/ListSockets', kind: 'unary' as const },
  ];
  for (const c of calls) {
    const o = await callRaw(client, c, [bad], { metadata: bearer(TOKEN.root), deadlineMs: 5_000 });
    t.is(o.code, status.INVALID_ARGUMENT, `${c.path}: ${status[o.code]} ${o.details}`);
    t.is(o.errorCode, 'ERR_SOCKGATE_INVALID_ARGUMENT', c.path);
    t.regex(o.details, /not a valid protobuf message/, c.path);
  }
  // And the gateway still serves well-formed calls.
  const r = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, GOOD());
  t.truthy(r.negotiation?.accepted);
});

/** 16 offers of kinds the gateway does not know: 16 fallbacks per Negotiate, and no transport. */
const BOGUS_OFFERS: TransportOffer[] = Array.from({ length: 16 }, (_, i) => ({ kind: (100 + i) as TransportKind, version: 1, params: undefined }));

test('Negotiate rounds per socket are bounded (max_negotiate_rounds) and fallbacks kept per socket too (max_fallbacks_per_socket)', async (t) => {
  const w = await world(t, { max_negotiate_rounds: 5, max_fallbacks_per_socket: 20 });
  const c = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, EVIL());
  const detail = 'x'.repeat(4000);
  for (let i = 0; i < 5; i++) {
    const e = await rpcError(
      rpc(w.sock, w.sock.negotiate, { socketId: c.socketId, offers: BOGUS_OFFERS, failedTransport: TransportKind.TRANSPORT_KIND_TCP, failedReason: DeclineReason.DECLINE_REASON_CONNECT_FAILED, failedDetail: detail }, EVIL()),
    );
    t.is(e.code, status.FAILED_PRECONDITION, `round ${i + 1} fails for want of a transport, not a limit: ${e.details}`);
  }
  const info = (await rpc(w.sock, w.sock.getInfo, { socketId: c.socketId }, EVIL())).info!;
  t.is(info.fallbacks.length, 20, 'the first 20 fallbacks are kept');
  t.is(info.fallbacksOmitted, 5 * 17 - 20, 'the rest are counted');
  t.true(info.fallbacks.every((f) => f.detail.length <= 256), 'details are cut');
  t.true(SocketInfo.encode(info).finish().length < 16 * 1024, 'one socket stays small');
  const over = await rpcError(rpc(w.sock, w.sock.negotiate, { socketId: c.socketId, offers: [TCP_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, EVIL()));
  t.is(over.code, status.RESOURCE_EXHAUSTED);
  t.regex(over.details, /max_negotiate_rounds/);
  t.true(await eventually(async () => (await rpc(w.sock, w.sock.getInfo, { socketId: c.socketId }, EVIL())).info!.state === SocketState.SOCKET_STATE_CLOSED, 5_000), 'the socket is aborted');
});

test('renegotiating does not renew a pending socket forever: tokens expire by max_pending_attach_ms after its creation, and the socket is then reaped', async (t) => {
  const w = await world(t, { max_pending_attach_ms: 1500 }, { transports: { enabled: ['tcp', 'grpc'], attach_token_ttl_ms: 60_000 } });
  const c = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, EVIL());
  const created = (await rpc(w.sock, w.sock.getInfo, { socketId: c.socketId }, EVIL())).info!.createdAtMs;
  t.true(c.negotiation!.accepted!.tokenExpiresAtMs <= created + 1500, 'the first token is capped by the pending bound, not the 60 s TTL');
  const n = await rpc(w.sock, w.sock.negotiate, { socketId: c.socketId, offers: [TCP_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, EVIL());
  t.true(n.negotiation!.accepted!.tokenExpiresAtMs <= created + 1500, 'a renewed token too');
  t.true(await eventually(async () => (await rpc(w.sock, w.sock.getInfo, { socketId: c.socketId }, EVIL())).info!.state === SocketState.SOCKET_STATE_CLOSED, 10_000), 'reaped');
  const late = await rpcError(rpc(w.sock, w.sock.negotiate, { socketId: c.socketId, offers: [TCP_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, EVIL()));
  t.not(late.code, status.OK);
});

test('pending sockets are bounded per identity and in total; attaching frees a place; another identity is unaffected by one tenant\'s per-identity bound', async (t) => {
  const w = await world(t, { max_pending_sockets_per_identity: 3, max_pending_sockets: 5 });
  const connect = (md = EVIL()) => rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, md);
  const mine = [await connect(), await connect(), await connect()];
  const e = await rpcError(connect());
  t.is(e.code, status.RESOURCE_EXHAUSTED);
  t.regex(e.details, /max_pending_sockets_per_identity/);
  // The good tenant may still open two, then the gateway-wide bound holds.
  await connect(GOOD());
  await connect(GOOD());
  const total = await rpcError(connect(GOOD()));
  t.is(total.code, status.RESOURCE_EXHAUSTED);
  t.regex(total.details, /limits\.max_pending_sockets\b/);
  // Attach one of the hostile's: its place frees.
  const tcp = mine[0]!.negotiation!.accepted!.params;
  if (tcp?.$case !== 'tcp') throw new Error('expected a tcp attach');
  const dc = await dataConnect({ host: tcp.tcp.host, port: tcp.tcp.port }, encodePreamble(mine[0]!.negotiation!.accepted!.attachToken));
  t.teardown(() => dc.sock.destroy());
  await dc.waitBytes(8, 5_000);
  t.is(dc.replyStatus(), AttachStatus.OK);
  t.true(await eventually(async () => (await connect(EVIL()).then(() => true, () => false)), 5_000), 'a place freed by the attach');
});

test('listen backlogs are bounded per identity as a sum (max_listen_backlog_per_identity); closing a listener gives its backlog back', async (t) => {
  const w = await world(t, { max_listen_backlog_per_identity: 300 });
  const listen = (backlog: number) => rpc(w.sock, w.sock.listen, { uri: 'tcp://127.0.0.1:0', backlog }, EVIL());
  const a = await listen(200);
  const e = await rpcError(listen(200));
  t.is(e.code, status.RESOURCE_EXHAUSTED);
  t.regex(e.details, /max_listen_backlog_per_identity/);
  await listen(100);
  await rpc(w.sock, w.sock.closeSocket, { socketId: a.listenerId }, EVIL());
  t.true(await eventually(async () => listen(200).then(() => true, () => false), 5_000));
});

test('ListSockets answers in pages of list_sockets_page_size; the SDK follows them to the full list', async (t) => {
  const w = await world(t, { list_sockets_page_size: 10, max_pending_sockets_per_identity: 100 });
  const ids = new Set<string>();
  for (let i = 0; i < 25; i++) ids.add((await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, EVIL())).socketId);
  const first = await rpc(w.admin, w.admin.listSockets, { identity: 'evil', pageSize: 0, pageToken: '' }, bearer(TOKEN.root));
  t.is(first.sockets.length, 10);
  t.is(first.total, 25);
  t.not(first.nextPageToken, '');
  const seen = new Set<string>();
  let token = '';
  for (let page = 0; page < 10; page++) {
    const r = await rpc(w.admin, w.admin.listSockets, { identity: 'evil', pageSize: 7, pageToken: token }, bearer(TOKEN.root));
    t.true(r.sockets.length <= 7);
    for (const s of r.sockets) seen.add(s.socketId);
    token = r.nextPageToken;
    if (!token) break;
  }
  t.deepEqual([...seen].sort(), [...ids].sort());
  const bad = await rpcError(rpc(w.admin, w.admin.listSockets, { identity: '', pageSize: 0, pageToken: 'nonsense' }, bearer(TOKEN.root)));
  t.is(bad.code, status.INVALID_ARGUMENT);
  const sdk = await SdkGateway.connect(w.gw.target, { token: TOKEN.root });
  t.teardown(() => sdk.close());
  t.deepEqual((await sdk.listSockets('evil')).map((s) => s.socketId).sort(), [...ids].sort());
});

test('a ListSockets page stays under the gRPC message limit however large the sockets are', (t) => {
  // 2,000 sockets of ~8 KB info each: 16 MB in one answer before; pages now.
  const fat = (i: number): GatewaySocket =>
    ({
      id: `t${i.toString(36)}-x`,
      createdAtMs: 1_000 + i,
      info: () => SocketInfo.fromPartial({ socketId: `t${i.toString(36)}-x`, identity: 'evil', localUri: 'y'.repeat(8000) }),
    }) as unknown as GatewaySocket;
  const all = Array.from({ length: 2000 }, (_, i) => fat(i));
  const seen: string[] = [];
  let token = '';
  for (let page = 0; page < 100; page++) {
    const r = listSocketsPage(all, { pageSize: 0, pageToken: token }, 10_000);
    const bytes = r.sockets.reduce((n, s) => n + SocketInfo.encode(s).finish().length + 6, 0);
    t.true(bytes <= MAX_LIST_RESPONSE_BYTES, `page of ${bytes} bytes`);
    t.true(bytes < 4 << 20);
    seen.push(...r.sockets.map((s) => s.socketId));
    token = r.nextPageToken;
    if (!token) break;
  }
  t.is(seen.length, 2000);
  t.is(new Set(seen).size, 2000);
});
