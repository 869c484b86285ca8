/**
 * Tenant isolation (issue 12, finding 1): a gateway with two tenants, a
 * hostile third identity and an admin, configured as an operator who only adds
 * identities would (nothing said about `anonymous`). The tenants open sockets
 * of every kind (streams over the tcp and shm planes, pending ones, a
 * listener, a datagram socket); the hostile identity, a caller without
 * credentials and the admin then call every RPC against every foreign socket
 * id and every attach token they can observe. Nobody but the owner acts on a
 * socket: the hostile one gets NOT_FOUND (exactly as for an id that does not
 * exist), the token-less caller UNAUTHENTICATED, the admin may list, read and
 * close but is denied everything else; the owners' tokens still attach and
 * their transfers, running meanwhile, arrive intact (SHA-256).
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as DgramSocket } from 'node:dgram';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import { AdminServiceClient, ShutdownHow, SocketGatewayServiceClient, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket } from '../../clients/sdk/socket.js';
import { encodePreamble, REPLY_BYTES, AttachStatus } from '../../proto/wire.js';
import { ADMIN_IDENTITY, ADMIN_TOKEN, echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../helpers/harness.js';
import { bearer, callRaw, dataConnect, method, rawClient, rpc, rpcError, type CallOutcome } from '../helpers/rpc.js';

const TOKEN = {
  a: 'tenant-a-token-0123456789abcdef',
  b: 'tenant-b-token-0123456789abcdef',
  hostile: 'hostile-token-0123456789abcdef',
};
const TCP_OFFER: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined };
const GRPC_OFFER: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_GRPC, version: 1, params: undefined };
/** Bytes each tenant stream moves while the attacks run. */
const TRANSFER_BYTES = 4 << 20;
/** The hostile peer's source address, and how many idle control connections it opens against a per-peer bound of PER_PEER_LIMIT. */
const HOSTILE_ADDRESS = '127.0.0.2';
const FLOOD_CONNECTIONS = 64;
const PER_PEER_LIMIT = 16;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const native = await import('../../native/index.js').then(
  (m) => m,
  () => undefined,
);

async function udpEcho(): Promise<{ sock: DgramSocket; port: number }> {
  const sock = createSocket('udp4');
  sock.on('message', (msg, from) => sock.send(msg, from.port, from.address));
  sock.bind(0, '127.0.0.1');
  await once(sock, 'listening');
  return { sock, port: sock.address().port };
}

test('no identity but the owner acts on a socket; admin lists and closes only; owners\' transfers stay intact', async (t) => {
  const echo = await echoServer();
  const udp = await udpEcho();
  t.teardown(async () => {
    await echo.close();
    udp.sock.close();
  });
  const gw = await startGateway({
    transports: { enabled: native ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'] },
    identities: [
      { name: 'tenant-a', tokens: [TOKEN.a] },
      { name: 'tenant-b', tokens: [TOKEN.b] },
      { name: 'hostile', tokens: [TOKEN.hostile] },
      ADMIN_IDENTITY,
    ],
    limits: { max_control_connections_per_peer: PER_PEER_LIMIT },
  });
  t.teardown(() => gw.stop());
  // Identities configured, nothing said about anonymous: it is off (it used to be on, and admin).
  t.false(gw.config.anonymous.enabled);

  const sdkA = await SdkGateway.connect(gw.target, { token: TOKEN.a });
  const sdkB = await SdkGateway.connect(gw.target, { token: TOKEN.b });
  const sock = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  const admin = new AdminServiceClient(gw.target, credentials.createInsecure());
  const raw = rawClient(gw.target);
  t.teardown(() => {
    sdkA.close();
    sdkB.close();
    sock.close();
    admin.close();
    raw.close();
  });

  // --- The tenants' sockets, of every kind.
  const streamTcp = await sdkA.connect(echo.uri, { transports: ['tcp'] });
  const streamShm = native ? await sdkB.connect(echo.uri, { transports: ['shm'] }) : undefined;
  if (native) t.is(streamShm!.transport, 'shm');
  const streamGrpc = await sdkB.connect(echo.uri, { transports: ['grpc'] });
  const dgram = await sdkA.udp(`udp://127.0.0.1:${udp.port}`, { mode: 'connect', transports: ['grpc'] });
  const listener = await sdkB.listen('tcp://127.0.0.1:0', { transports: ['tcp'] });
  // Pending sockets (connected, not attached), whose tokens the owner keeps.
  const pendingA = await rpc(sock, sock.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.a));
  const pendingB = await rpc(sock, sock.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.b));
  const pendingDgram = await rpc(sock, sock.connect, { uri: `udp://127.0.0.1:${udp.port}`, offers: [GRPC_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.b));
  const foreign: [string, string][] = [
    ['stream/tcp', streamTcp.socketId],
    ...(streamShm ? [['stream/shm', streamShm.socketId] as [string, string]] : []),
    ['stream/grpc', streamGrpc.socketId],
    ['datagram', dgram.socketId],
    ['listener', listener.listenerId],
    ['pending stream A', pendingA.socketId],
    ['pending stream B', pendingB.socketId],
    ['pending datagram', pendingDgram.socketId],
  ];

  // --- The tenants' transfers run while the attacks do.
  const streams: [string, GatewaySocket][] = [['tcp', streamTcp], ...(streamShm ? [['shm', streamShm] as [string, GatewaySocket]] : []), ['grpc', streamGrpc]];
  const transfers = streams.map(async ([plane, s]) => {
    const got = hashUntilEnd(s);
    const sent = await sendRandom(s, TRANSFER_BYTES, 32 * 1024, false);
    return { plane, sent, s, got };
  });
  const inbound = new Promise<{ sent: string; got: Promise<{ sha256: string }> }>((resolve, reject) => {
    listener.once('error', reject);
    listener.once('connection', (c: GatewaySocket) => {
      // The listener echoes what its peer sends (a host client outside the gateway).
      c.pipe(c);
    });
    const { port } = listener.address();
    const peer = netConnect({ host: '127.0.0.1', port });
    peer.on('error', reject);
    peer.once('connect', () => {
      const got = hashUntilEnd(peer);
      void sendRandom(peer, 1 << 20).then((sent) => resolve({ sent, got }));
    });
  });
  const datagrams: Buffer[] = [];
  const replies: Buffer[] = [];
  dgram.on('message', (m: Buffer) => replies.push(Buffer.from(m)));
  for (let i = 0; i < 20; i++) {
    const d = randomBytes(512);
    datagrams.push(d);
    await dgram.send(d);
  }

  // --- The hostile identity: every RPC on every foreign id is NOT_FOUND, the same answer as for an id that does not exist.
  const H = bearer(TOKEN.hostile);
  const A = bearer(ADMIN_TOKEN);
  const none = new Metadata();
  const unaryCalls: [string, (id: string, md: Metadata) => Promise<unknown>][] = [
    ['GetInfo', (id, md) => rpc(sock, sock.getInfo, { socketId: id }, md)],
    ['Negotiate', (id, md) => rpc(sock, sock.negotiate, { socketId: id, offers: [TCP_OFFER, GRPC_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, md)],
    ['CloseSocket', (id, md) => rpc(sock, sock.closeSocket, { socketId: id }, md)],
    ['Shutdown', (id, md) => rpc(sock, sock.shutdown, { socketId: id, how: ShutdownHow.SHUTDOWN_HOW_BOTH }, md)],
    ['SetOption', (id, md) => rpc(sock, sock.setOption, { socketId: id, option: { option: { $case: 'noDelay', noDelay: true } } }, md)],
    ['SendTo', (id, md) => rpc(sock, sock.sendTo, { socketId: id, datagram: { uri: '', payload: Buffer.from('hostile') } }, md)],
  ];
  const streamCalls: [string, (id: string, md: Metadata) => Promise<CallOutcome>][] = [
    ['RecvFrom', (id, md) => callRaw(raw, method('RecvFrom'), [method('RecvFrom').serialize({ socketId: id })], { metadata: md, deadlineMs: 3_000, cancelAfterMs: 1_500 })],
    ['Accept', (id, md) => callRaw(raw, method('Accept'), [method('Accept').serialize({ listenerId: id, offers: [TCP_OFFER] })], { metadata: md, deadlineMs: 3_000, cancelAfterMs: 1_500 })],
  ];
  for (const [kind, id] of foreign) {
    for (const [name, call] of unaryCalls) {
      const e = await rpcError(call(id, H));
      const ghost = await rpcError(call(`${id}0`, H));
      t.is(e.code, status.NOT_FOUND, `hostile ${name} on ${kind}`);
      t.is(e.details.replace(id, '<id>'), ghost.details.replace(`${id}0`, '<id>'), `hostile ${name} on ${kind}: same as for no socket`);
      const anon = await rpcError(call(id, none));
      t.is(anon.code, status.UNAUTHENTICATED, `no credentials: ${name} on ${kind}`);
    }
    for (const [name, call] of streamCalls) {
      const out = await call(id, H);
      t.is(out.code, status.NOT_FOUND, `hostile ${name} on ${kind}`);
      t.is(out.messages.length, 0, `hostile ${name} on ${kind}: nothing received`);
      t.is((await call(id, none)).code, status.UNAUTHENTICATED, `no credentials: ${name} on ${kind}`);
    }
  }
  // The hostile one lists only its own (none), and may not name a tenant.
  t.deepEqual((await rpc(admin, admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, H)).sockets, []);
  t.is((await rpcError(rpc(admin, admin.listSockets, { identity: 'tenant-a', pageSize: 0, pageToken: '' }, H))).code, status.PERMISSION_DENIED);
  t.is((await rpcError(rpc(admin, admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, none))).code, status.UNAUTHENTICATED);

  // --- Attach tokens: the hostile one sees only its own; guessed ones are refused on every plane.
  const own = await rpc(sock, sock.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, H);
  const ownTcp = own.negotiation!.accepted!;
  if (ownTcp.params?.$case !== 'tcp') throw new Error('expected tcp params');
  const dataAddr = { host: ownTcp.params.tcp.host, port: ownTcp.params.tcp.port };
  for (let i = 0; i < 3; i++) {
    const guess = await dataConnect(dataAddr, encodePreamble(randomBytes(32)));
    await within(guess.closed, 5_000, 'a guessed token is refused on the data port');
    t.not(guess.replyStatus(), AttachStatus.OK);
    const grpcGuess = await callRaw(raw, method('Data'), [method('Data').serialize({ frame: { $case: 'attachToken', attachToken: randomBytes(32) } })], { metadata: H, deadlineMs: 5_000 });
    t.is(grpcGuess.code, status.UNAUTHENTICATED, 'a guessed token is refused on the grpc plane');
  }

  // Its own token attaches its own socket once; a replay, or the same token on another plane, is refused.
  const mine = await dataConnect(dataAddr, encodePreamble(ownTcp.attachToken));
  await within(mine.waitBytes(REPLY_BYTES, 5_000), 5_000, 'own attach reply');
  t.is(mine.replyStatus(), AttachStatus.OK);
  const replay = await dataConnect(dataAddr, encodePreamble(ownTcp.attachToken));
  await within(replay.closed, 5_000, 'a replayed token is refused');
  t.not(replay.replyStatus(), AttachStatus.OK);
  const otherPlane = await callRaw(raw, method('Data'), [method('Data').serialize({ frame: { $case: 'attachToken', attachToken: ownTcp.attachToken } })], { metadata: H, deadlineMs: 5_000 });
  t.is(otherPlane.code, status.UNAUTHENTICATED);
  mine.sock.destroy();

  // --- A flood of idle control connections from the hostile peer is held to its bound; the gateway keeps serving.
  const fdsBefore = readdirSync('/proc/self/fd').length;
  const flood = await Promise.all(
    Array.from({ length: FLOOD_CONNECTIONS }, async () => {
      const c = netConnect({ host: '127.0.0.1', port: Number(gw.target.slice(gw.target.lastIndexOf(':') + 1)), localAddress: HOSTILE_ADDRESS });
      c.on('error', () => {});
      c.resume();
      await once(c, 'connect');
      return c;
    }),
  );
  t.teardown(() => flood.forEach((c) => c.destroy()));
  await within(
    (async () => {
      while (flood.filter((c) => c.destroyed || c.readableEnded).length < FLOOD_CONNECTIONS - PER_PEER_LIMIT) await new Promise((r) => setTimeout(r, 20));
    })(),
    10_000,
    'the flood beyond the per-peer bound is closed',
  );
  t.true(gw.gateway.controlAdmission.open <= PER_PEER_LIMIT + 8, `control connections held: ${gw.gateway.controlAdmission.open}`);
  // This process holds both ends: the client ends of the flood plus at most PER_PEER_LIMIT gateway ends (and a few in passing).
  const fdsDuring = readdirSync('/proc/self/fd').length;
  t.true(fdsDuring - fdsBefore <= FLOOD_CONNECTIONS + PER_PEER_LIMIT + 8, `fds grew by ${fdsDuring - fdsBefore}`);
  t.true((await rpc(admin, admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, A)).sockets.length > 0, 'the gateway still answers during the flood');
  flood.forEach((c) => c.destroy());

  // --- The admin: may list (all, or one identity), read info and close a foreign socket; nothing else.
  const listed = (await rpc(admin, admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, A)).sockets.map((s) => s.socketId);
  for (const [kind, id] of foreign) t.true(listed.includes(id), `admin lists ${kind}`);
  const onlyA = (await rpc(admin, admin.listSockets, { identity: 'tenant-a', pageSize: 0, pageToken: '' }, A)).sockets;
  t.true(onlyA.every((s) => s.identity === 'tenant-a') && onlyA.length === 3);
  for (const [kind, id] of foreign) {
    t.truthy((await rpc(sock, sock.getInfo, { socketId: id }, A)).info, `admin GetInfo ${kind}`);
    for (const [name, call] of unaryCalls) {
      if (name === 'GetInfo' || name === 'CloseSocket') continue;
      const e = await rpcError(call(id, A));
      t.is(e.code, status.PERMISSION_DENIED, `admin ${name} on ${kind}`);
      t.is(e.rule, 'ownership', `admin ${name} on ${kind}`);
    }
    for (const [name, call] of streamCalls) {
      const out = await call(id, A);
      t.is(out.code, status.PERMISSION_DENIED, `admin ${name} on ${kind}`);
      t.is(out.messages.length, 0);
    }
  }

  // --- Even a leaked token attaches for its owner only (grpc plane: the Data call's identity must own the socket).
  const leaky = await rpc(sock, sock.connect, { uri: echo.uri, offers: [GRPC_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.a));
  const leaked = leaky.negotiation!.accepted!.attachToken;
  for (const md of [H, A]) {
    const out = await callRaw(raw, method('Data'), [method('Data').serialize({ frame: { $case: 'attachToken', attachToken: leaked } })], { metadata: md, deadlineMs: 5_000 });
    t.is(out.code, status.UNAUTHENTICATED, 'a leaked token is refused to another identity');
    t.is(out.messages.length, 0);
  }
  // The owner negotiates a fresh token and attaches with it.
  const fresh = await rpc(sock, sock.negotiate, { socketId: leaky.socketId, offers: [GRPC_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, bearer(TOKEN.a));
  const attached = await callRaw(raw, method('Data'), [method('Data').serialize({ frame: { $case: 'attachToken', attachToken: fresh.negotiation!.accepted!.attachToken } })], {
    metadata: bearer(TOKEN.a),
    deadlineMs: 5_000,
  });
  t.true(attached.messages.length >= 1, `the owner attaches: ${status[attached.code]} ${attached.details}`);

  // --- The owners are unaffected: their pending tokens still attach (Negotiate by others revoked nothing), bytes intact.
  for (const [who, pending] of [['tenant-a', pendingA], ['tenant-b', pendingB]] as const) {
    const acc = pending.negotiation!.accepted!;
    if (acc.params?.$case !== 'tcp') throw new Error('expected tcp params');
    const conn = await dataConnect({ host: acc.params.tcp.host, port: acc.params.tcp.port }, encodePreamble(acc.attachToken));
    await within(conn.waitBytes(REPLY_BYTES, 5_000), 5_000, `${who} attach reply`);
    t.is(conn.replyStatus(), AttachStatus.OK, `${who}'s own token still attaches`);
    const payload = randomBytes(256 * 1024);
    conn.sock.write(payload);
    await within(conn.waitBytes(REPLY_BYTES + payload.length, 10_000), 10_000, `${who} echo`);
    t.is(sha(conn.received().subarray(REPLY_BYTES)), sha(payload));
    conn.sock.destroy();
  }
  for (const done of await Promise.all(transfers)) {
    done.s.end();
    const back = await within(done.got, 30_000, `${done.plane} transfer`);
    t.is(back.sha256, done.sent, `${done.plane} transfer intact`);
  }
  const ib = await within(inbound, 10_000, 'inbound connection');
  t.is((await within(ib.got, 10_000, 'inbound echo')).sha256, ib.sent, 'listener transfer intact');
  t.true(
    await within(
      (async () => {
        while (replies.length < datagrams.length) await new Promise((r) => setTimeout(r, 20));
        return true;
      })(),
      10_000,
      'datagram replies',
    ),
  );
  t.deepEqual(replies.map(sha).sort(), datagrams.map(sha).sort(), 'datagrams intact');

  // --- Finally the admin closes a foreign socket (allowed), and its owner sees it gone.
  await rpc(sock, sock.closeSocket, { socketId: pendingDgram.socketId }, A);
  const gone = await rpc(sock, sock.getInfo, { socketId: pendingDgram.socketId }, bearer(TOKEN.b));
  t.is(gone.info?.state, SocketState.SOCKET_STATE_CLOSED);
});
