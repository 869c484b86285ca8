/**
 * Policy end to end, through a real gateway on loopback: bearer-token
 * identities, allow and deny rules (with the deciding rule in the status and
 * the `sockgate-rule` trailer), per-identity socket limits, bad URIs, DNS and
 * connect errors as precise statuses, admin-only calls, isolation between
 * identities, and negotiation fallbacks as seen by GetInfo and Prometheus.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import { AdminServiceClient, SocketGatewayServiceClient, SocketState, ShutdownHow } from '../../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, ShmOffer, TransportKind, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import {
  DnsError,
  ConnectRefusedError,
  InvalidUriError,
  LimitExceededError,
  NoTransportError,
  PolicyDeniedError,
  SockgateError,
  UnauthenticatedError,
} from '../../proto/errors.js';
import { encodePreamble, REPLY_BYTES, AttachStatus } from '../../proto/wire.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within, type TestGateway } from '../helpers/harness.js';
import { bearer, callRaw, closedPort, dataConnect, eventually, method, metricSum, rawClient, rpc, rpcError, scrape } from '../helpers/rpc.js';

const TOKEN = {
  alice: 'alice-token-0123456789abcdef',
  bob: 'bob-token-0123456789abcdef0000',
  root: 'root-token-0123456789abcdef000',
  carol: 'carol-token-0123456789abcdef00',
};

type Echo = Awaited<ReturnType<typeof echoServer>>;

interface World {
  gw: TestGateway;
  /** The destination rules allow. */
  echo: Echo;
  /** A destination a deny rule names. */
  secret: Echo;
  /** A loopback port nothing listens on, allowed by the rules. */
  closed: number;
  sock: SocketGatewayServiceClient;
  admin: AdminServiceClient;
  /** Connect as `who`, offering `offers` (default tcp). */
  connect(who: keyof typeof TOKEN, uri: string, offers?: TransportOffer[]): Promise<{ socketId: string; kinds: TransportKind | undefined }>;
}

const TCP_OFFER: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined };

async function world(t: ExecutionContext, extra: Record<string, unknown> = {}): Promise<World> {
  const echo = await echoServer();
  const secret = await echoServer();
  const closed = await closedPort();
  const gw = await startGateway(
    {
      anonymous: { enabled: false },
      identities: [
        { name: 'alice', tokens: [TOKEN.alice], max_sockets: 2 },
        { name: 'bob', tokens: [TOKEN.bob] },
        { name: 'root', tokens: [TOKEN.root], admin: true },
        { name: 'carol', tokens: [TOKEN.carol], transports: ['grpc'] },
      ],
      rules: [
        { name: 'deny-secret', action: 'deny', destinations: ['127.0.0.1'], ports: [secret.port] },
        { name: 'allow-echo', action: 'allow', protocols: ['tcp'], destinations: ['127.0.0.1'], ports: [echo.port, closed] },
        { name: 'allow-invalid-tld', action: 'allow', destinations: ['*.invalid'] },
        { name: 'listen-loopback', action: 'allow', directions: ['listen', 'bind'], destinations: ['127.0.0.1'], ports: ['0-65535'] },
      ],
      ...extra,
    },
    { token: TOKEN.root },
  );
  const sock = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  const admin = new AdminServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    sock.close();
    admin.close();
    await gw.stop();
    await echo.close();
    await secret.close();
  });
  return {
    gw,
    echo,
    secret,
    closed,
    sock,
    admin,
    async connect(who, uri, offers = [TCP_OFFER]) {
      const res = await rpc(sock, sock.connect, { uri, offers, timeoutMs: 0, options: [] }, bearer(TOKEN[who]));
      return { socketId: res.socketId, kinds: res.negotiation?.accepted?.kind };
    },
  };
}

async function sdkAs(w: World, who: keyof typeof TOKEN): Promise<SdkGateway> {
  return SdkGateway.connect(w.gw.target, { token: TOKEN[who] });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('an allowed destination connects and carries bytes (SHA-256)', async (t) => {
  const w = await world(t);
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  const s = await sdk.connect(w.echo.uri);
  const got = hashUntilEnd(s);
  const sent = await sendRandom(s, 512 * 1024);
  const r = await within(got, 10_000, 'echo');
  t.is(r.sha256, sent);
  t.is(r.bytes, 512 * 1024);
});

test('a destination a deny rule matches is PERMISSION_DENIED naming the rule, in the message and the sockgate-rule trailer', async (t) => {
  const w = await world(t);
  const e = await rpcError(w.connect('alice', w.secret.uri));
  t.is(e.code, status.PERMISSION_DENIED);
  t.is(e.errorCode, 'ERR_SOCKGATE_POLICY_DENIED');
  t.is(e.rule, 'deny-secret');
  t.regex(e.details, /deny-secret/);
  t.regex(e.details, /alice/);
  t.is(await new Promise<number>((r) => w.secret.server.getConnections((_e, n) => r(n))), 0, 'the denied destination was never contacted');

  // Through the SDK: the same class, with the rule.
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  const err = await t.throwsAsync(sdk.connect(w.secret.uri), { instanceOf: PolicyDeniedError });
  t.is(err?.rule, 'deny-secret');

  // Host names that resolve to the denied address are denied too (policy judges the resolved address).
  const byName = await rpcError(w.connect('alice', `tcp://localhost:${w.secret.port}`));
  t.is(byName.code, status.PERMISSION_DENIED);
});

test('a destination no rule allows is PERMISSION_DENIED by default-deny', async (t) => {
  const w = await world(t);
  for (const uri of [`tcp://127.0.0.2:${w.echo.port}`, `udp://127.0.0.1:${w.echo.port}`, 'tcp://10.255.255.1:80', 'tcp://127.0.0.1:1']) {
    const e = await rpcError(w.connect('alice', uri));
    t.is(e.code, status.PERMISSION_DENIED, uri);
    t.is(e.rule, 'default-deny', uri);
    t.regex(e.details, /no rule allows it/, uri);
  }
  t.is(w.gw.gateway.table.size, 0);
});

test('unknown, missing and malformed credentials are UNAUTHENTICATED on every kind of call', async (t) => {
  const w = await world(t);
  const wrong = bearer('not-a-known-token-0123456789');
  const none = new Metadata();
  const basic = new Metadata();
  basic.set('authorization', `Basic ${Buffer.from('alice:pw').toString('base64')}`);
  const empty = new Metadata();
  empty.set('authorization', 'Bearer ');
  for (const [what, md] of [['unknown token', wrong], ['no credentials', none], ['Basic scheme', basic], ['empty bearer', empty]] as const) {
    const c = await rpcError(rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [], timeoutMs: 0, options: [] }, md));
    t.is(c.code, status.UNAUTHENTICATED, `Connect, ${what}`);
    t.is(c.errorCode, 'ERR_SOCKGATE_UNAUTHENTICATED', `Connect, ${what}`);
    const g = await rpcError(rpc(w.sock, w.sock.getInfo, { socketId: 't1' }, md));
    t.is(g.code, status.UNAUTHENTICATED, `GetInfo, ${what}`);
    const l = await rpcError(rpc(w.admin, w.admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, md));
    t.is(l.code, status.UNAUTHENTICATED, `ListSockets, ${what}`);
    // Server-streaming calls too.
    const raw = rawClient(w.gw.target);
    const acc = await callRaw(raw, method('Accept'), [Buffer.from([0x0a, 0x02, 0x6c, 0x31])], { metadata: md, deadlineMs: 5_000 });
    const rcv = await callRaw(raw, method('RecvFrom'), [Buffer.from([0x0a, 0x02, 0x75, 0x31])], { metadata: md, deadlineMs: 5_000 });
    raw.close();
    t.is(acc.code, status.UNAUTHENTICATED, `Accept, ${what}`);
    t.is(rcv.code, status.UNAUTHENTICATED, `RecvFrom, ${what}`);
  }
  const sdk = await SdkGateway.connect(w.gw.target, { token: 'not-a-known-token-0123456789' });
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect(w.echo.uri), { instanceOf: UnauthenticatedError });
  t.is(w.gw.gateway.table.size, 0);
});

test('max_sockets per identity: the third Connect is RESOURCE_EXHAUSTED; closing one frees its slot; others are unaffected', async (t) => {
  const w = await world(t);
  const a = await w.connect('alice', w.echo.uri);
  const b = await w.connect('alice', w.echo.uri);
  const e = await rpcError(w.connect('alice', w.echo.uri));
  t.is(e.code, status.RESOURCE_EXHAUSTED);
  t.is(e.errorCode, 'ERR_SOCKGATE_LIMIT_EXCEEDED');
  t.regex(e.details, /alice/);
  t.regex(e.details, /2/);
  // A Listen counts against the same limit.
  const l = await rpcError(rpc(w.sock, w.sock.listen, { uri: 'tcp://127.0.0.1:0', backlog: 0 }, bearer(TOKEN.alice)));
  t.is(l.code, status.RESOURCE_EXHAUSTED);
  // Another identity still connects.
  const other = await w.connect('bob', w.echo.uri);
  t.truthy(other.socketId);
  // Close one: a new one works at once.
  await rpc(w.sock, w.sock.closeSocket, { socketId: a.socketId }, bearer(TOKEN.alice));
  const c = await w.connect('alice', w.echo.uri);
  t.truthy(c.socketId);
  const again = await rpcError(w.connect('alice', w.echo.uri));
  t.is(again.code, status.RESOURCE_EXHAUSTED);
  for (const id of [b.socketId, c.socketId]) await rpc(w.sock, w.sock.closeSocket, { socketId: id }, bearer(TOKEN.alice));
  await rpc(w.sock, w.sock.closeSocket, { socketId: other.socketId }, bearer(TOKEN.bob));
  t.true(await eventually(() => w.gw.gateway.table.size === 0, 3_000));
});

test('max_sockets with attached SDK sockets: a destroyed socket frees its slot', async (t) => {
  const w = await world(t);
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  const s1 = await sdk.connect(w.echo.uri);
  const s2 = await sdk.connect(w.echo.uri, { transports: ['grpc', 'tcp'] });
  t.is(s2.transport, 'grpc', 'alice may use grpc');
  const err = await t.throwsAsync(sdk.connect(w.echo.uri), { instanceOf: LimitExceededError });
  t.is(err?.code, 'ERR_SOCKGATE_LIMIT_EXCEEDED');
  s1.destroy();
  // The slot frees once the gateway has seen the data connection go.
  let s3: Awaited<ReturnType<SdkGateway['connect']>> | undefined;
  const ok = await eventually(async () => {
    s3 = await sdk.connect(w.echo.uri).catch(() => undefined);
    return s3 !== undefined;
  }, 5_000);
  t.true(ok, 'a new socket opens after one was destroyed');
  const got = hashUntilEnd(s3!);
  const sent = await sendRandom(s3!, 100_000);
  t.is((await within(got, 10_000, 'echo on the freed slot')).sha256, sent);
  s2.destroy();
});

const BAD_URIS: [string, RegExp][] = [
  ['tcp://127.0.0.1', /missing a port/],
  ['tcp://127.0.0.1:', /missing a port/],
  ['tcp://127.0.0.1:0', /port 0/],
  ['tcp://127.0.0.1:65536', /65536.*65535/],
  ['tcp://127.0.0.1:99999', /99999/],
  ['tcp://127.0.0.1:-1', /not a number/],
  ['tcp://127.0.0.1:http', /not a number/],
  ['http://127.0.0.1:80', /unknown scheme "http"/],
  ['ftp://127.0.0.1:21', /unknown scheme "ftp"/],
  ['127.0.0.1:80', /no scheme/],
  ['garbage', /no scheme/],
  ['%%%', /no scheme/],
  ['', /empty/],
  ['tcp://:80', /missing a host/],
  ['tcp://[::1:80', /unterminated/],
  ['tcp://::1:80', /brackets/],
  ['tcp6://127.0.0.1:80', /IPv4/],
  ['tcp://user@127.0.0.1:80', /user info/],
  ['tcp://127.0.0.1:80/path', /path/],
  ['tcp://exa mple.com:80', /invalid host name/],
  ['tcp://999.1.1.1:80', /neither a valid IP address nor a host name/],
  [`tcp://${'a'.repeat(2000)}:80`, /longer than/],
];

test('bad URIs are INVALID_ARGUMENT with a message naming the problem, and cost no socket', async (t) => {
  const w = await world(t);
  for (const [uri, why] of BAD_URIS) {
    const e = await rpcError(w.connect('alice', uri));
    const shown = uri.length > 40 ? `${uri.slice(0, 40)}...` : uri;
    t.is(e.code, status.INVALID_ARGUMENT, shown);
    t.is(e.errorCode, 'ERR_SOCKGATE_INVALID_URI', shown);
    t.regex(e.details, why, shown);
  }
  // Listen and Bind name the protocol they need.
  const l = await rpcError(rpc(w.sock, w.sock.listen, { uri: 'udp://127.0.0.1:0', backlog: 0 }, bearer(TOKEN.alice)));
  t.is(l.code, status.INVALID_ARGUMENT);
  t.regex(l.details, /needs a tcp URI/);
  const b = await rpcError(rpc(w.sock, w.sock.bind, { uri: 'tcp://127.0.0.1:0', offers: [] }, bearer(TOKEN.alice)));
  t.is(b.code, status.INVALID_ARGUMENT);
  t.regex(b.details, /needs a udp URI/);
  // Through the SDK: InvalidUriError.
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect('tcp://127.0.0.1:0'), { instanceOf: InvalidUriError, message: /port 0/ });
  // None of it used alice's two slots.
  t.is(w.gw.gateway.table.size, 0);
  await w.connect('alice', w.echo.uri);
  await w.connect('alice', w.echo.uri);
});

test('a name that does not resolve is NOT_FOUND with ERR_SOCKGATE_DNS naming the host', async (t) => {
  const w = await world(t);
  const e = await rpcError(w.connect('alice', 'tcp://no-such-host.sockgate-test.invalid:80'));
  t.is(e.code, status.NOT_FOUND);
  t.is(e.errorCode, 'ERR_SOCKGATE_DNS');
  t.regex(e.details, /no-such-host\.sockgate-test\.invalid/);
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect('tcp://other.invalid:443'), { instanceOf: DnsError });
  t.is(w.gw.gateway.table.size, 0);
  const text = await scrape(w.gw.gateway.addresses.metrics!);
  t.true(metricSum(text, 'sockgate_connects_total', { result: 'dns' }) >= 2, 'DNS failures are counted as connects{result="dns"}');
});

test('a closed loopback port is UNAVAILABLE with ERR_SOCKGATE_CONNECT_REFUSED, and the slot is released', async (t) => {
  const w = await world(t);
  for (let i = 0; i < 3; i++) {
    const e = await rpcError(w.connect('alice', `tcp://127.0.0.1:${w.closed}`));
    t.is(e.code, status.UNAVAILABLE);
    t.is(e.errorCode, 'ERR_SOCKGATE_CONNECT_REFUSED');
    t.regex(e.details, new RegExp(String(w.closed)));
  }
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect(`tcp://127.0.0.1:${w.closed}`), { instanceOf: ConnectRefusedError });
  t.is(w.gw.gateway.table.size, 0);
  // Four refusals did not eat alice's limit of two.
  await w.connect('alice', w.echo.uri);
  await w.connect('alice', w.echo.uri);
  const text = await scrape(w.gw.gateway.addresses.metrics!);
  t.true(metricSum(text, 'sockgate_connects_total', { result: 'refused' }) >= 4);
});

test('ListSockets shows a non-admin its own sockets only (another identity\'s is denied) and every identity to an admin', async (t) => {
  const w = await world(t);
  const a = await w.connect('alice', w.echo.uri);
  const b = await w.connect('bob', w.echo.uri);
  // Issue 12: ListSockets used to be admin-only; every identity now lists its own sockets.
  const own = await rpc(w.admin, w.admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, bearer(TOKEN.alice));
  t.deepEqual(own.sockets.map((s) => s.socketId), [a.socketId]);
  const e = await rpcError(rpc(w.admin, w.admin.listSockets, { identity: 'bob', pageSize: 0, pageToken: '' }, bearer(TOKEN.alice)));
  t.is(e.code, status.PERMISSION_DENIED);
  t.is(e.errorCode, 'ERR_SOCKGATE_POLICY_DENIED');
  t.is(e.rule, 'admin');
  t.regex(e.details, /alice/);
  const all = await rpc(w.admin, w.admin.listSockets, { identity: '', pageSize: 0, pageToken: '' }, bearer(TOKEN.root));
  t.deepEqual(all.sockets.map((s) => `${s.socketId}:${s.identity}`).sort(), [`${a.socketId}:alice`, `${b.socketId}:bob`].sort());
  const onlyBob = await rpc(w.admin, w.admin.listSockets, { identity: 'bob', pageSize: 0, pageToken: '' }, bearer(TOKEN.root));
  t.deepEqual(onlyBob.sockets.map((s) => s.socketId), [b.socketId]);
  const sdk = await sdkAs(w, 'bob');
  t.teardown(() => sdk.close());
  t.deepEqual((await sdk.listSockets()).map((s) => s.socketId), [b.socketId]);
  await t.throwsAsync(sdk.listSockets('alice'), { instanceOf: PolicyDeniedError });
});

test('an identity can neither see nor touch another identity\'s sockets (NOT_FOUND, indistinguishable from no socket)', async (t) => {
  const w = await world(t);
  const a = await w.connect('alice', w.echo.uri);
  const listener = await rpc(w.sock, w.sock.listen, { uri: 'tcp://127.0.0.1:0', backlog: 0 }, bearer(TOKEN.alice));
  const bob = bearer(TOKEN.bob);
  const calls: [string, (id: string) => Promise<unknown>][] = [
    ['GetInfo', (id) => rpc(w.sock, w.sock.getInfo, { socketId: id }, bob)],
    ['CloseSocket', (id) => rpc(w.sock, w.sock.closeSocket, { socketId: id }, bob)],
    ['Shutdown', (id) => rpc(w.sock, w.sock.shutdown, { socketId: id, how: ShutdownHow.SHUTDOWN_HOW_BOTH }, bob)],
    ['SetOption', (id) => rpc(w.sock, w.sock.setOption, { socketId: id, option: { option: { $case: 'noDelay', noDelay: true } } }, bob)],
    ['Negotiate', (id) => rpc(w.sock, w.sock.negotiate, { socketId: id, offers: [TCP_OFFER], failedTransport: 0, failedReason: 0, failedDetail: '' }, bob)],
    ['SendTo', (id) => rpc(w.sock, w.sock.sendTo, { socketId: id, datagram: { uri: '', payload: Buffer.from('x') } }, bob)],
  ];
  for (const [name, call] of calls) {
    for (const id of [a.socketId, listener.listenerId]) {
      const e = await rpcError(call(id));
      const ghost = await rpcError(call(`${id}zz`));
      t.is(e.code, status.NOT_FOUND, `${name} ${id}`);
      t.is(e.errorCode, 'ERR_SOCKGATE_SOCKET_NOT_FOUND', `${name} ${id}`);
      t.is(e.details.replace(id, '<id>'), ghost.details.replace(`${id}zz`, '<id>'), `${name}: same answer as for a socket that does not exist`);
    }
  }
  // Accept on someone else's listener.
  const raw = rawClient(w.gw.target);
  t.teardown(() => raw.close());
  const accept = await callRaw(raw, method('Accept'), [method('Accept').serialize({ listenerId: listener.listenerId, offers: [] })], { metadata: bob, deadlineMs: 5_000 });
  t.is(accept.code, status.NOT_FOUND);
  // Alice's socket and listener are untouched, and an admin can see them.
  const info = await rpc(w.sock, w.sock.getInfo, { socketId: a.socketId }, bearer(TOKEN.alice));
  t.is(info.info?.state, SocketState.SOCKET_STATE_PENDING_ATTACH);
  t.is(info.info?.identity, 'alice');
  const l = await rpc(w.sock, w.sock.getInfo, { socketId: listener.listenerId }, bearer(TOKEN.alice));
  t.is(l.info?.state, SocketState.SOCKET_STATE_LISTENING);
  const asRoot = await rpc(w.sock, w.sock.getInfo, { socketId: a.socketId }, bearer(TOKEN.root));
  t.is(asRoot.info?.identity, 'alice');
});

test('negotiation: [shm, tcp] falls back to tcp, the reason is on the socket (GetInfo) and in sockgate_fallbacks_total', async (t) => {
  // shm disabled explicitly, so the expected reason does not depend on whether this build has shm.
  const w = await world(t, { transports: { enabled: ['tcp', 'grpc'] } });
  const url = w.gw.gateway.addresses.metrics!;
  const before = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'UNSUPPORTED' });
  const shm: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: { $case: 'shm', shm: ShmOffer.fromPartial({ ringBytes: 1 << 20, hostId: 'test' }) } };
  const res = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [shm, TCP_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.alice));
  const acc = res.negotiation?.accepted;
  t.is(acc?.kind, TransportKind.TRANSPORT_KIND_TCP);
  t.is(res.negotiation?.fallbacks.length, 1);
  t.is(res.negotiation?.fallbacks[0]?.kind, TransportKind.TRANSPORT_KIND_SHM);
  t.is(res.negotiation?.fallbacks[0]?.reason, DeclineReason.DECLINE_REASON_UNSUPPORTED);
  t.regex(res.negotiation?.fallbacks[0]?.detail ?? '', /shm/);

  const pending = await rpc(w.sock, w.sock.getInfo, { socketId: res.socketId }, bearer(TOKEN.alice));
  t.is(pending.info?.fallbackReason, DeclineReason.DECLINE_REASON_UNSUPPORTED);
  t.deepEqual(pending.info?.fallbacks.map((f) => [f.kind, f.reason]), [[TransportKind.TRANSPORT_KIND_SHM, DeclineReason.DECLINE_REASON_UNSUPPORTED]]);

  // Attach over tcp and move bytes; the fallback stays recorded.
  if (acc?.params?.$case !== 'tcp') throw new Error('expected tcp params');
  const conn = await dataConnect({ host: acc.params.tcp.host, port: acc.params.tcp.port }, encodePreamble(acc.attachToken));
  await within(conn.waitBytes(REPLY_BYTES, 3_000), 3_000, 'attach reply');
  t.is(conn.replyStatus(), AttachStatus.OK);
  const payload = randomBytes(64 * 1024);
  conn.sock.write(payload);
  await within(conn.waitBytes(REPLY_BYTES + payload.length, 5_000), 5_000, 'echo');
  t.is(sha(conn.received().subarray(REPLY_BYTES)), sha(payload));
  const open = await rpc(w.sock, w.sock.getInfo, { socketId: res.socketId }, bearer(TOKEN.alice));
  t.is(open.info?.transport, TransportKind.TRANSPORT_KIND_TCP);
  t.is(open.info?.fallbackReason, DeclineReason.DECLINE_REASON_UNSUPPORTED);
  t.is(open.info?.fallbacks.length, 1);
  conn.sock.destroy();

  const after = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'UNSUPPORTED' });
  t.is(after - before, 1, 'exactly one shm fallback counted');
});

test('negotiation: an identity limited to grpc offering [tcp, grpc] gets grpc with a POLICY fallback', async (t) => {
  const w = await world(t);
  const url = w.gw.gateway.addresses.metrics!;
  const before = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'tcp', reason: 'POLICY' });
  const grpcOffer: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_GRPC, version: 1, params: undefined };
  const res = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER, grpcOffer], timeoutMs: 0, options: [] }, bearer(TOKEN.carol));
  t.is(res.negotiation?.accepted?.kind, TransportKind.TRANSPORT_KIND_GRPC);
  t.deepEqual(res.negotiation?.fallbacks.map((f) => [f.kind, f.reason]), [[TransportKind.TRANSPORT_KIND_TCP, DeclineReason.DECLINE_REASON_POLICY]]);
  t.regex(res.negotiation?.fallbacks[0]?.detail ?? '', /carol/);
  const info = await rpc(w.sock, w.sock.getInfo, { socketId: res.socketId }, bearer(TOKEN.carol));
  t.is(info.info?.fallbackReason, DeclineReason.DECLINE_REASON_POLICY);
  t.is(metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'tcp', reason: 'POLICY' }) - before, 1);
  // Offering only tcp: no transport, naming the policy reason.
  const e = await rpcError(rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.carol)));
  t.is(e.code, status.FAILED_PRECONDITION);
  t.is(e.errorCode, 'ERR_SOCKGATE_NO_TRANSPORT');
  t.regex(e.details, /POLICY/);
  // The SDK as carol falls back by itself.
  const sdk = await sdkAs(w, 'carol');
  t.teardown(() => sdk.close());
  const s = await sdk.connect(w.echo.uri, { transports: ['tcp', 'grpc'] });
  t.is(s.transport, 'grpc');
  t.deepEqual(s.fallbacks.map((f) => [f.transport, f.reason]), [['tcp', 'POLICY']]);
  s.destroy();
});

test('negotiation: offering only transports the gateway disabled is FAILED_PRECONDITION ERR_SOCKGATE_NO_TRANSPORT naming the reason', async (t) => {
  const w = await world(t, { transports: { enabled: ['grpc'] } });
  const e = await rpcError(w.connect('alice', w.echo.uri, [TCP_OFFER]));
  t.is(e.code, status.FAILED_PRECONDITION);
  t.is(e.errorCode, 'ERR_SOCKGATE_NO_TRANSPORT');
  t.regex(e.details, /tcp/);
  t.regex(e.details, /UNSUPPORTED/);
  t.regex(e.details, /disabled/);
  // Several disabled or unknown offers: every one is named.
  const many = await rpcError(
    w.connect('alice', w.echo.uri, [
      { kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: undefined },
      { kind: TransportKind.TRANSPORT_KIND_RDMA, version: 1, params: undefined },
      TCP_OFFER,
      { kind: 42 as TransportKind, version: 1, params: undefined },
    ]),
  );
  t.is(many.code, status.FAILED_PRECONDITION);
  for (const name of ['shm', 'rdma', 'tcp']) t.regex(many.details, new RegExp(`${name}: UNSUPPORTED`));
  t.regex(many.details, /unknown transport 42/);
  t.is(w.gw.gateway.table.size, 0, 'no socket is left behind by a failed negotiation');
  t.is(await new Promise<number>((r) => w.echo.server.getConnections((_e, n) => r(n))), 0, 'the destination was not even contacted');
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect(w.echo.uri, { transports: ['tcp'] }), { instanceOf: NoTransportError });
  const s = await sdk.connect(w.echo.uri);
  t.is(s.transport, 'grpc', 'the default offers fall back to grpc');
  // A local gateway gets shm first by default; this one has only grpc enabled.
  t.deepEqual(s.fallbacks.map((f) => [f.transport, f.reason]), [['shm', 'UNSUPPORTED'], ['tcp', 'UNSUPPORTED']]);
  s.destroy();
});

test('negotiation: Negotiate after a failed attach records CONNECT_FAILED and revokes the old token', async (t) => {
  const w = await world(t);
  const grpcOffer: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_GRPC, version: 1, params: undefined };
  const res = await rpc(w.sock, w.sock.connect, { uri: w.echo.uri, offers: [TCP_OFFER, grpcOffer], timeoutMs: 0, options: [] }, bearer(TOKEN.alice));
  const oldAcc = res.negotiation?.accepted;
  t.is(oldAcc?.kind, TransportKind.TRANSPORT_KIND_TCP);
  const next = await rpc(
    w.sock,
    w.sock.negotiate,
    { socketId: res.socketId, offers: [grpcOffer], failedTransport: TransportKind.TRANSPORT_KIND_TCP, failedReason: DeclineReason.DECLINE_REASON_CONNECT_FAILED, failedDetail: 'data port unreachable' },
    bearer(TOKEN.alice),
  );
  t.is(next.negotiation?.accepted?.kind, TransportKind.TRANSPORT_KIND_GRPC);
  const info = await rpc(w.sock, w.sock.getInfo, { socketId: res.socketId }, bearer(TOKEN.alice));
  t.deepEqual(info.info?.fallbacks.map((f) => [f.kind, f.reason, f.detail]), [[TransportKind.TRANSPORT_KIND_TCP, DeclineReason.DECLINE_REASON_CONNECT_FAILED, 'data port unreachable']]);
  // The tcp token from the first round no longer attaches.
  if (oldAcc?.params?.$case !== 'tcp') throw new Error('expected tcp params');
  const conn = await dataConnect({ host: oldAcc.params.tcp.host, port: oldAcc.params.tcp.port }, encodePreamble(oldAcc.attachToken));
  await within(conn.closed, 3_000, 'old token refused');
  t.not(conn.replyStatus(), AttachStatus.OK);
  const text = await scrape(w.gw.gateway.addresses.metrics!);
  t.true(metricSum(text, 'sockgate_fallbacks_total', { transport: 'tcp', reason: 'CONNECT_FAILED' }) >= 1);
});

test('SDK errors keep their class and code for every denial (round trip through the status table)', async (t) => {
  const w = await world(t);
  const sdk = await sdkAs(w, 'alice');
  t.teardown(() => sdk.close());
  const cases: [string, new (...a: never[]) => SockgateError, string][] = [
    [w.secret.uri, PolicyDeniedError, 'ERR_SOCKGATE_POLICY_DENIED'],
    ['tcp://127.0.0.1:0', InvalidUriError, 'ERR_SOCKGATE_INVALID_URI'],
    [`tcp://127.0.0.1:${w.closed}`, ConnectRefusedError, 'ERR_SOCKGATE_CONNECT_REFUSED'],
    ['tcp://x.invalid:1', DnsError, 'ERR_SOCKGATE_DNS'],
  ];
  for (const [uri, cls, code] of cases) {
    const err = await t.throwsAsync(sdk.connect(uri), { instanceOf: cls });
    t.is(err?.code, code, uri);
  }
});
