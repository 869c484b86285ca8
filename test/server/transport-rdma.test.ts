/**
 * The rdma data plane's gateway side, on a host without an RDMA device (the
 * live path runs in the Soft-RoCE VM, test/rdma/): a gateway with rdma enabled
 * declines rdma offers with NO_RDMA_DEVICE and a detail naming the cause (no
 * device / no headers, or no address configured), the client's next offer
 * (tcp) then carries the bytes (SHA-256 both ways), datagram sockets are
 * KIND_UNSUPPORTED; the config keys validate and errors name them; the session
 * table (ids, ownership, slots, limits, expiry, the socket tie) and the short
 * attach-token form the connect private data carries, as units.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { credentials } from '@grpc/grpc-js';
import { metrics as otelMetrics } from '@opentelemetry/api';
import * as native from '../../native/index.js';
import { SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, type Accepted, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachRegistry, AttachTokenError, SHORT_TOKEN_BYTES } from '../../server/attach.js';
import { loadConfig } from '../../server/config.js';
import { fromSystemError, RdmaDeviceRemovedError, RdmaProtocolError } from '../../proto/errors.js';
import type { Logger } from '../../native/log.js';
import { Negotiator } from '../../server/negotiate.js';
import { Policy, type Identity } from '../../server/policy.js';
import type { GatewaySocket } from '../../server/socket-table.js';
import type { GatewayMetrics } from '../../server/telemetry.js';
import type { Transport } from '../../server/transport.js';
import { RdmaSessions } from '../../server/rdma-sessions.js';
import { RdmaTransport } from '../../server/transport-rdma.js';
import { AttachStatus, encodePreamble, REPLY_BYTES } from '../../proto/wire.js';
import { echoServer, startGateway, within } from '../helpers/harness.js';
import { dataConnect, metricSum, rpc, scrape } from '../helpers/rpc.js';

const NO_ADDRESS = 'no RDMA address configured (transports.rdma.address)';
/** Whether this host could actually serve rdma (then the decline tests do not apply: test/rdma covers it). */
const deviceHere = native.rdma.available && typeof native.rdma.listen === 'function';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function rdmaOffer(sessionId = randomBytes(16).toString('base64url')): TransportOffer {
  return { kind: TransportKind.TRANSPORT_KIND_RDMA, version: 1, params: { $case: 'rdma', rdma: { address: '', ringBytes: 1 << 18, sessionId, preissue: 0 } } };
}
const TCP_OFFER: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined };

function identity(name: string): Identity {
  return { name, admin: false, maxSockets: 100, source: 'token', transports: new Set(['rdma', 'tcp']) } as Identity;
}

/** A stand-in for a gateway socket: the session table only reads id and identity. */
function socketOf(id: string, who: Identity): GatewaySocket {
  // What Negotiator.issue touches: the id, the owner and the fallback record.
  const s = { id, identity: who, fallbacks: [] as unknown[], setFallbacks: (all: unknown[]) => void (s.fallbacks = [...all]) };
  return s as unknown as GatewaySocket;
}

function sessions(over: Partial<{ slots: number; maxSessions: number; maxSessionsPerIdentity: number; reservationMs: number }> = {}): RdmaSessions {
  return new RdmaSessions({ slots: 4, maxSessions: 8, maxSessionsPerIdentity: 3, reservationMs: 60_000, ...over });
}

// ---- end to end: a gateway on a host without an RDMA device ---------------------

async function setup(t: { teardown(fn: () => unknown): void }, rdma: Record<string, unknown>) {
  const gw = await startGateway({ transports: { rdma } });
  const echo = await echoServer();
  const client = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await echo.close();
    await gw.stop();
  });
  return { gw, echo, client };
}

/** Connect offering [rdma, tcp]; then the tcp attach echoes 1 MiB intact. */
async function fallBackToTcp(t: import('ava').ExecutionContext, rdma: Record<string, unknown>, detail: (d: string) => boolean, want: string) {
  const { gw, echo, client } = await setup(t, rdma);
  const url = gw.gateway.addresses.metrics!;
  const before = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'rdma', reason: 'NO_RDMA_DEVICE' });
  const res = await rpc(client, client.connect, { uri: echo.uri, offers: [rdmaOffer(), TCP_OFFER], timeoutMs: 0, options: [] });
  const fb = res.negotiation?.fallbacks ?? [];
  t.is(fb.length, 1);
  t.is(fb[0]?.kind, TransportKind.TRANSPORT_KIND_RDMA);
  t.is(fb[0]?.reason, DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  t.true(detail(fb[0]?.detail ?? ''), `detail ${JSON.stringify(fb[0]?.detail)}, want ${want}`);
  const accepted = res.negotiation?.accepted as Accepted;
  t.is(accepted.kind, TransportKind.TRANSPORT_KIND_TCP);
  if (accepted.params?.$case !== 'tcp') throw new Error('not tcp');
  // The fallback is on the socket and counted.
  const info = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(info.info?.fallbackReason, DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  t.is(metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'rdma', reason: 'NO_RDMA_DEVICE' }), before + 1);
  // tcp carries the bytes.
  const conn = await dataConnect({ host: accepted.params.tcp.host, port: accepted.params.tcp.port }, encodePreamble(accepted.attachToken));
  const payload = randomBytes(1 << 20);
  for (let o = 0; o < payload.length; o += 65536) conn.sock.write(payload.subarray(o, o + 65536));
  await within(conn.waitBytes(REPLY_BYTES + payload.length, 15_000), 15_000, 'echo of 1 MiB over tcp');
  t.is(conn.replyStatus(), AttachStatus.OK);
  t.is(sha(conn.received().subarray(REPLY_BYTES, REPLY_BYTES + payload.length)), sha(payload));
  conn.sock.end();
  await within(conn.closed, 5_000, 'close after half-close');
}

test('rdma enabled with an address but no usable device: NO_RDMA_DEVICE naming the cause, then tcp carries every byte', async (t) => {
  if (deviceHere) {
    t.log('this host has an RDMA device: the live path is tested in test/rdma');
    t.pass();
    return;
  }
  t.timeout(30_000);
  // Built without rdma-core headers the reason names `apt-get install libibverbs-dev librdmacm-dev`; with them, the missing device.
  t.true(native.rdma.reason !== '', 'the addon says why rdma is unavailable');
  await fallBackToTcp(t, { address: '127.0.0.1' }, (d) => d === native.rdma.reason, JSON.stringify(native.rdma.reason));
});

test('rdma enabled without an address (the embedded default): NO_RDMA_DEVICE says no address is configured, then tcp works', async (t) => {
  t.timeout(30_000);
  await fallBackToTcp(t, {}, (d) => d === NO_ADDRESS, JSON.stringify(NO_ADDRESS));
});

test('a datagram socket offering rdma: KIND_UNSUPPORTED, then tcp', async (t) => {
  const { client } = await setup(t, { address: '127.0.0.1' });
  const res = await rpc(client, client.connect, { uri: 'udp://127.0.0.1:9', offers: [rdmaOffer(), TCP_OFFER], timeoutMs: 0, options: [] });
  t.is(res.negotiation?.fallbacks[0]?.reason, DeclineReason.DECLINE_REASON_KIND_UNSUPPORTED);
  t.is(res.negotiation?.fallbacks[0]?.detail, 'rdma carries stream sockets only');
  t.is(res.negotiation?.accepted?.kind, TransportKind.TRANSPORT_KIND_TCP);
});

test('rdma disabled in transports.enabled: UNSUPPORTED, not NO_RDMA_DEVICE', async (t) => {
  const gw = await startGateway({ transports: { enabled: ['tcp', 'grpc'] } });
  const echo = await echoServer();
  const client = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(async () => {
    client.close();
    await echo.close();
    await gw.stop();
  });
  const res = await rpc(client, client.connect, { uri: echo.uri, offers: [rdmaOffer(), TCP_OFFER], timeoutMs: 0, options: [] });
  t.is(res.negotiation?.fallbacks[0]?.reason, DeclineReason.DECLINE_REASON_UNSUPPORTED);
  t.regex(res.negotiation?.fallbacks[0]?.detail ?? '', /transports\.enabled/);
});

// ---- the transport object, without a listener ------------------------------------------

function transport(over: Record<string, unknown> = {}): RdmaTransport {
  const config = loadConfig({ overrides: { transports: { rdma: over } } });
  const silent = { warn() {}, info() {}, error() {}, debug() {} } as unknown as Logger;
  return new RdmaTransport({
    config: config.transports.rdma,
    tokenTtlMs: 1000,
    native,
    hub: () => {
      throw new Error('no pump needed without a listener');
    },
    registry: new AttachRegistry(1000),
    metrics: { recordAttach() {} } as unknown as GatewayMetrics,
    meter: otelMetrics.getMeter('test'),
    logger: silent,
  });
}

test('accept() without a listener: KIND_UNSUPPORTED for datagrams first, NO_RDMA_DEVICE with the reason for streams; never throws', async (t) => {
  const tr = transport();
  const who = identity('alice');
  const ctx = { identity: who, socketKind: 'stream' as const, peer: 'ipv4:10.0.0.2:4000' };
  t.deepEqual(tr.accept(rdmaOffer(), { ...ctx, socketKind: 'datagram' }), { ok: false, reason: DeclineReason.DECLINE_REASON_KIND_UNSUPPORTED, detail: 'rdma carries stream sockets only' });
  t.deepEqual(tr.accept(rdmaOffer(), ctx), { ok: false, reason: DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE, detail: 'the rdma transport has not started' });
  await tr.start();
  t.false(tr.listening);
  t.is(tr.unavailableReason, NO_ADDRESS);
  t.deepEqual(tr.accept({ kind: TransportKind.TRANSPORT_KIND_RDMA, version: 1, params: undefined }, ctx), { ok: false, reason: DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE, detail: NO_ADDRESS });
  if (!deviceHere) {
    const withAddr = transport({ address: '192.0.2.1' });
    await withAddr.start();
    t.is(withAddr.unavailableReason, native.rdma.reason);
  }
  await tr.close();
  t.is(tr.accept(rdmaOffer(), ctx).ok, false);
  await tr.shutdown();
});

// ---- config ------------------------------------------------------------------------

test('config: transports.rdma defaults (address "" = not served) and every bad value names its key', (t) => {
  t.deepEqual(loadConfig().transports.rdma, {
    address: '',
    port: 0,
    ring_bytes: 1 << 20,
    slots: 16,
    credits: 64,
    keepalive_ms: 5000,
    resume_ms: 0,
    poll_us: 0,
    max_sessions: 256,
    max_sessions_per_identity: 16,
    max_preissued_slots: 4,
  });
  t.is(loadConfig({ sets: ['transports.rdma.max_preissued_slots=0'] }).transports.rdma.max_preissued_slots, 0);
  const ok = loadConfig({ overrides: { transports: { rdma: { address: 'fd00::5', port: 7471, ring_bytes: 4096, slots: 4096, credits: 4, keepalive_ms: 0, poll_us: 1000, max_sessions: 0 } } } });
  t.is(ok.transports.rdma.poll_us, 1000);
  t.is(ok.transports.rdma.address, 'fd00::5');
  t.is(ok.transports.rdma.max_sessions, 0);
  t.is(loadConfig({ env: { SOCKGATE_TRANSPORTS__RDMA__ADDRESS: '10.1.2.3' } }).transports.rdma.address, '10.1.2.3');
  t.is(loadConfig({ sets: ['transports.rdma.slots=128'] }).transports.rdma.slots, 128);
  const bad: Array<[Record<string, unknown>, string]> = [
    [{ address: 'rdma-host.example' }, 'transports.rdma.address'],
    [{ address: '0.0.0.0' }, 'transports.rdma.address'],
    [{ address: '::' }, 'transports.rdma.address'],
    [{ port: 70000 }, 'transports.rdma.port'],
    [{ ring_bytes: 300000 }, 'transports.rdma.ring_bytes'],
    [{ ring_bytes: 2048 }, 'transports.rdma.ring_bytes'],
    [{ ring_bytes: 128 << 20 }, 'transports.rdma.ring_bytes'],
    [{ slots: 0 }, 'transports.rdma.slots'],
    [{ slots: 4097 }, 'transports.rdma.slots'],
    [{ credits: 3 }, 'transports.rdma.credits'],
    [{ credits: 1025 }, 'transports.rdma.credits'],
    [{ keepalive_ms: 10 }, 'transports.rdma.keepalive_ms'],
    [{ keepalive_ms: -1 }, 'transports.rdma.keepalive_ms'],
    [{ resume_ms: -1 }, 'transports.rdma.resume_ms'],
    [{ resume_ms: 600_001 }, 'transports.rdma.resume_ms'],
    [{ poll_us: 1001 }, 'transports.rdma.poll_us'],
    [{ poll_us: -1 }, 'transports.rdma.poll_us'],
    [{ max_sessions: -1 }, 'transports.rdma.max_sessions'],
    [{ max_sessions_per_identity: 0 }, 'transports.rdma.max_sessions_per_identity'],
    [{ max_preissued_slots: -1 }, 'transports.rdma.max_preissued_slots'],
    [{ max_preissued_slots: 4097 }, 'transports.rdma.max_preissued_slots'],
    [{ ring_byte: 4096 }, 'transports.rdma.ring_byte: unknown key'],
  ];
  for (const [rdma, key] of bad) {
    const err = t.throws(() => loadConfig({ overrides: { transports: { rdma } } }), undefined, JSON.stringify(rdma));
    t.true(err?.message.includes(`  ${key}`), `${JSON.stringify(rdma)}: ${err?.message}`);
  }
});

// ---- the session table --------------------------------------------------------------

test('sessions: the first offer of an id creates a pending session (new_session), later ones reserve further slots of it', (t) => {
  const table = sessions();
  const alice = identity('alice');
  const a = table.reserve(alice, 'alice-session-1');
  const b = table.reserve(alice, 'alice-session-1');
  if (!a.ok || !b.ok) throw new Error('declined');
  t.is(a.session, b.session);
  t.is(a.session.id, 'alice-session-1');
  t.is(a.session.state, 'pending');
  t.true(a.newSession, 'the first socket opens the connection');
  t.false(b.newSession, 'the second binds over it');
  t.not(a.slot.no, b.slot.no);
  t.deepEqual([a.slot.no, b.slot.no], [0, 1]);
  t.is(table.size, 1);
  t.is(table.countOf('alice'), 1);
});

test('sessions: an id owned by another identity is never shared: the other gets a session of its own under a fresh id', (t) => {
  const table = sessions();
  const alice = identity('alice');
  const mallory = identity('mallory');
  const a = table.reserve(alice, 'shared-name-0001');
  const m = table.reserve(mallory, 'shared-name-0001');
  if (!a.ok || !m.ok) throw new Error('declined');
  t.not(m.session, a.session);
  t.not(m.session.id, 'shared-name-0001');
  t.regex(m.session.id, /^[A-Za-z0-9_-]{8,64}$/);
  t.is(m.session.identity.name, 'mallory');
  t.true(m.newSession);
  t.is(a.session.slots.size, 1, "alice's session is untouched");
  // A socket of mallory cannot be tied to alice's reservation, nor the other way round.
  t.false(table.issued(socketOf('m1', mallory), a.session.id, a.slot.no));
  t.true(table.issued(socketOf('a1', alice), a.session.id, a.slot.no));
  t.true(table.issued(socketOf('m2', mallory), m.session.id, m.slot.no));
  // And the owner keeps using its id.
  const a2 = table.reserve(alice, 'shared-name-0001');
  t.true(a2.ok && a2.session === a.session);
});

test('sessions: empty, short, long and malformed ids are declined (PEER_DECLINED), never thrown', (t) => {
  const table = sessions();
  for (const id of ['', 'short', 'x'.repeat(65), 'has space in it', 'ünïcödé-session', '../../../etc']) {
    const r = table.reserve(identity('alice'), id);
    t.false(r.ok, id);
    if (!r.ok) {
      t.is(r.reason, DeclineReason.DECLINE_REASON_PEER_DECLINED, id);
      t.true(r.detail.length < 200, 'client input is cut in the detail');
    }
  }
  t.is(table.size, 0);
});

test('sessions: a busy session overflows into a further session of the same identity (new_session, fresh id); RESOURCE_LIMIT at max_sessions and max_sessions_per_identity', (t) => {
  const table = sessions({ slots: 2, maxSessions: 3, maxSessionsPerIdentity: 2 });
  const alice = identity('alice');
  const first = table.reserve(alice, 'alice-session-1');
  t.true(first.ok && first.newSession && first.session.id === 'alice-session-1');
  const second = table.reserve(alice, 'alice-session-1');
  t.true(second.ok);
  // Both slots busy: the third socket opens a second connection.
  const over = table.reserve(alice, 'alice-session-1');
  if (!over.ok) return t.fail(over.detail);
  t.not(over.session.id, 'alice-session-1');
  t.true(over.newSession, 'the client opens the overflow session');
  t.is(table.countOf('alice'), 2);
  const over2 = table.reserve(alice, 'alice-session-1');
  t.true(over2.ok && over2.session === over.session && !over2.newSession, 'the next one waits for that connection');
  // Everything busy and alice at her session limit.
  const full = table.reserve(alice, 'alice-session-1');
  t.false(full.ok);
  if (!full.ok) {
    t.is(full.reason, DeclineReason.DECLINE_REASON_RESOURCE_LIMIT);
    t.regex(full.detail, /every one of the 2 slots of rdma session alice-session-1 and of its overflow sessions is busy \(transports\.rdma\.slots\)/);
    t.regex(full.detail, /identity "alice" holds 2 of 2 .*max_sessions_per_identity/);
  }
  // A slot of the named session frees up: it is used again before the overflow.
  if (second.ok) table.free(second.slot);
  const again = table.reserve(alice, 'alice-session-1');
  t.true(again.ok && again.session.id === 'alice-session-1' && !again.newSession);
  const perIdentity = table.reserve(alice, 'alice-session-3');
  t.false(perIdentity.ok);
  if (!perIdentity.ok) t.regex(perIdentity.detail, /identity "alice" holds 2 of 2 .*max_sessions_per_identity/);
  t.true(table.reserve(identity('bob'), 'bob-session-01').ok, 'another identity still gets one');
  const total = table.reserve(identity('carol'), 'carol-session-1');
  t.false(total.ok);
  if (!total.ok) t.regex(total.detail, /3 of 3 rdma sessions \(transports\.rdma\.max_sessions\)/);
  // max_sessions 0: every offer is declined.
  const none = sessions({ maxSessions: 0 }).reserve(alice, 'alice-session-1');
  t.true(!none.ok && none.reason === DeclineReason.DECLINE_REASON_RESOURCE_LIMIT);
});

test('sessions: an overflow session that ended is replaced by a new one; its own sockets never move', (t) => {
  const table = sessions({ slots: 1, maxSessions: 8, maxSessionsPerIdentity: 8 });
  const alice = identity('alice');
  t.true(table.reserve(alice, 'alice-session-1').ok);
  const o1 = table.reserve(alice, 'alice-session-1');
  const o2 = table.reserve(alice, 'alice-session-1');
  if (!o1.ok || !o2.ok) return t.fail('no overflow');
  t.not(o1.session, o2.session, 'a chain: each session holds one slot here');
  table.remove(o1.session);
  const o3 = table.reserve(alice, 'alice-session-1');
  if (!o3.ok) return t.fail(o3.detail);
  t.true(o3.newSession);
  t.not(o3.session, o1.session);
  t.not(o3.session, o2.session, 'the chain broke at the ended session: a new one follows the named session');
  t.is(table.byId.get(o2.session.id), o2.session, 'the orphaned overflow session keeps its socket');
  t.is(table.countOf('alice'), 3);
});

test('sessions: a reservation expires with its token; a pending session left without reservations is forgotten', async (t) => {
  const table = sessions({ reservationMs: 50 });
  const alice = identity('alice');
  const a = table.reserve(alice, 'alice-session-1');
  t.true(a.ok);
  t.is(table.size, 1);
  await new Promise((r) => setTimeout(r, 120));
  t.is(table.size, 0);
  t.is(table.countOf('alice'), 0);
  const again = table.reserve(alice, 'alice-session-1');
  t.true(again.ok && again.newSession && again.slot.no === 0, 'the id starts over');
});

test('sessions: when the connecting socket goes (freed, abandoned), the next offer opens the connection instead', (t) => {
  const table = sessions();
  const alice = identity('alice');
  const a = table.reserve(alice, 'alice-session-1');
  const b = table.reserve(alice, 'alice-session-1');
  if (!a.ok || !b.ok) throw new Error('declined');
  t.true(a.newSession);
  t.false(b.newSession);
  // a's host connect failed: its decision is abandoned.
  table.abandon(a.session.id, a.slot.no);
  t.is(a.session.connector, undefined);
  const c = table.reserve(alice, 'alice-session-1');
  t.true(c.ok && c.newSession, 'a later socket is told to open the connection');
  // An issued reservation is not abandoned (its socket exists).
  if (!c.ok) return;
  t.true(table.issued(socketOf('c', alice), c.session.id, c.slot.no));
  table.abandon(c.session.id, c.slot.no);
  t.is(c.session.slots.get(c.slot.no), c.slot);
});

test('sessions: issued() ties a reservation to its socket; a socket that negotiates again gives the earlier one up', (t) => {
  const table = sessions();
  const alice = identity('alice');
  const sock = socketOf('t1', alice);
  const a = table.reserve(alice, 'alice-session-1');
  if (!a.ok) throw new Error('declined');
  t.true(table.issued(sock, a.session.id, a.slot.no));
  t.is(table.reservationOf(sock), a.slot);
  t.false(table.issued(socketOf('t2', alice), a.session.id, a.slot.no), 'one socket per reservation');
  t.false(table.issued(sock, a.session.id, 3), 'no reservation there');
  t.false(table.issued(sock, 'no-such-session', 0));
  const b = table.reserve(alice, 'alice-session-1');
  if (!b.ok) throw new Error('declined');
  t.true(table.issued(sock, b.session.id, b.slot.no));
  t.is(table.reservationOf(sock), b.slot);
  t.false(a.session.slots.has(a.slot.no), 'the earlier reservation is free again');
  table.free(b.slot);
  t.is(table.reservationOf(sock), undefined);
  t.is(table.size, 0);
});

test('sessions: a slot number held for a refused bind is not reserved again until released', (t) => {
  const table = sessions({ slots: 2 });
  const alice = identity('alice');
  const a = table.reserve(alice, 'alice-session-1');
  if (!a.ok) throw new Error('declined');
  const held = table.hold(a.session, 1);
  t.is(held?.state, 'closing');
  t.is(table.hold(a.session, 9), undefined, 'out of range');
  const over = table.reserve(alice, 'alice-session-1');
  t.true(over.ok && over.session !== a.session, 'slot 1 is still taken: the offer overflows');
  table.free(held!);
  const b = table.reserve(alice, 'alice-session-1');
  t.true(b.ok && b.session === a.session && b.slot.no === 1);
  table.remove(a.session);
  if (over.ok) table.remove(over.session);
  t.is(table.size, 0);
  t.is(table.countOf('alice'), 0);
});

// ---- the seams: issued/abandoned, short tokens, end codes ----------------------------------

test('negotiator: issue() tells the chosen transport which socket it is for; abandon() lets it release the reservation', async (t) => {
  const calls: string[] = [];
  const fake: Transport = {
    kind: TransportKind.TRANSPORT_KIND_RDMA,
    version: 1,
    accept: () => ({ ok: true, accepted: { kind: TransportKind.TRANSPORT_KIND_RDMA, version: 1, params: undefined } }),
    issued: (socket) => void calls.push(`issued ${socket.id}`),
    abandoned: () => void calls.push('abandoned'),
    start: async () => {},
    close: async () => {},
  };
  const policy = new Policy(loadConfig());
  const metrics = { recordFallback() {} } as unknown as GatewayMetrics;
  const n = new Negotiator(new Map([[TransportKind.TRANSPORT_KIND_RDMA, fake]]), new Set(['rdma'] as const), policy, new AttachRegistry(1000), metrics);
  const ctx = { identity: policy.identify({}), socketKind: 'stream' as const, peer: 'ipv4:10.0.0.2:1' };
  const d = await n.decide([rdmaOffer()], ctx);
  n.abandon(d);
  n.issue(socketOf('t7', ctx.identity), d, () => {});
  t.deepEqual(calls, ['abandoned', 'issued t7']);
});

test('attach registry: the short form (first 16 bytes) redeems once, for its transport only; redeem() never takes it', (t) => {
  const reg = new AttachRegistry<string>(10_000);
  const { token } = reg.issue('sock-1', TransportKind.TRANSPORT_KIND_RDMA, () => {});
  const short = token.subarray(0, SHORT_TOKEN_BYTES);
  const failure = (fn: () => unknown) => (t.throws(fn, { instanceOf: AttachTokenError }) as AttachTokenError).failure;
  t.is(failure(() => reg.redeem(short, TransportKind.TRANSPORT_KIND_RDMA)), 'wrong_token');
  t.is(failure(() => reg.redeemShort(token, TransportKind.TRANSPORT_KIND_RDMA)), 'wrong_token', 'a whole token is not a short form');
  t.is(failure(() => reg.redeemShort(randomBytes(SHORT_TOKEN_BYTES), TransportKind.TRANSPORT_KIND_RDMA)), 'wrong_token');
  t.is(failure(() => reg.redeemShort(short, TransportKind.TRANSPORT_KIND_TCP)), 'wrong_transport');
  t.is(reg.redeemShort(short, TransportKind.TRANSPORT_KIND_RDMA), 'sock-1');
  t.is(failure(() => reg.redeemShort(short, TransportKind.TRANSPORT_KIND_RDMA)), 'replayed');
  t.is(failure(() => reg.redeem(token, TransportKind.TRANSPORT_KIND_RDMA)), 'replayed', 'one redemption spends both forms');
  t.is(failure(() => reg.redeem(short, TransportKind.TRANSPORT_KIND_RDMA)), 'wrong_token');
  // Revoked: the short form is spent too.
  const second = reg.issue('sock-2', TransportKind.TRANSPORT_KIND_RDMA, () => {});
  reg.revoke('sock-2');
  t.is(failure(() => reg.redeemShort(second.token.subarray(0, SHORT_TOKEN_BYTES), TransportKind.TRANSPORT_KIND_RDMA)), 'expired');
  t.is(reg.size, 0);
  reg.close();
});

test('a native link ended with an ERR_SOCKGATE_RDMA_* code fails its socket with that class (and code)', (t) => {
  const removed = fromSystemError(Object.assign(new Error('ERR_SOCKGATE_RDMA_DEVICE_REMOVED'), { code: 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED' }), 'socket t1');
  t.true(removed instanceof RdmaDeviceRemovedError);
  t.is(removed.code, 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED');
  t.true(fromSystemError(Object.assign(new Error('x'), { code: 'ERR_SOCKGATE_RDMA_PROTOCOL' }), 'socket t1') instanceof RdmaProtocolError);
  t.is(fromSystemError(Object.assign(new Error('x'), { code: 'ECONNRESET' }), 'socket t1').code, 'ERR_SOCKGATE_CONNECTION_RESET');
  t.is(fromSystemError(Object.assign(new Error('x'), { code: 'ERR_SOCKGATE_NO_SUCH_THING' }), 'socket t1').code, 'ERR_SOCKGATE_HOST_SOCKET');
});
