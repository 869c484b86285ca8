/**
 * Pre-issued rdma slots (native/RDMA.md "Pre-issued slots") end to end on a
 * real kernel RDMA stack: a gateway serving rdma on rxe0 and the SDK in one
 * process (topology (a), inside the Soft-RoCE VM; on the host it skips).
 * Checks: once the session is connected, answers carry pre-issued slots; a
 * Connect naming one finds its socket linked (no BIND: the SDK's BIND count,
 * the protocol messages it sends, does not move), bytes intact both ways
 * (SHA-256), including a server that speaks first; a Connect naming a slot
 * that is in use is refused (ERR_SOCKGATE_SLOT_REFUSED) and the session stays
 * usable; a slot given back with CLOSE (a Connect of unknown outcome) is
 * freed on the gateway, and one the gateway had linked resets its host
 * socket, and the connection carries on; an SDK that asks for none, and a gateway that issues none, BIND
 * every later socket as before.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { RdmaClientSession } from '../../clients/sdk/rdma-client-session.js';
import { native } from '../../clients/sdk/native-optional.js';
import type { RdmaTransport } from '../../server/transport-rdma.js';
import { eventually, rpc } from '../helpers/rpc.js';
import { credentials } from '@grpc/grpc-js';
import { SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import type { RdmaClient } from '../../clients/sdk/attach-rdma.js';
import type { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../helpers/harness.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const T_MS = 60_000;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** BINDs the SDK sends (every one goes through RdmaClientSession.link with a token). */
let binds = 0;
const link = RdmaClientSession.prototype.link;
RdmaClientSession.prototype.link = function (this: RdmaClientSession, ...args: Parameters<typeof link>) {
  if (args[2] !== undefined) binds++;
  return link.apply(this, args);
};

const rdmaClient = (sdk: SdkGateway): RdmaClient => (sdk as unknown as { attacher: { rdmaClient: RdmaClient } }).attacher.rdmaClient;
const primary = (sdk: SdkGateway) => {
  const c = rdmaClient(sdk);
  return c.sessions.get(c.sessionId) as unknown as RdmaClientSession;
};

async function setup(t: ExecutionContext, rdma: Record<string, unknown>, sdkRdma: Record<string, unknown> = {}) {
  const gw = await startGateway({ transports: { rdma: { address: ADDR, keepalive_ms: 2000, ...rdma } } }, { transports: ['rdma'], rdma: sdkRdma });
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  return { gw, echo, sdk: gw.sdk };
}

async function echoed(t: ExecutionContext, sock: Duplex, bytes: number, what: string): Promise<void> {
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, bytes);
  const r = await within(got, T_MS, `${what}: echo`);
  t.is(r.bytes, bytes, what);
  t.is(r.sha256, sent, what);
}

/** A server that writes `greeting` as soon as a client connects, then hashes what the client sends until its end. */
async function speaksFirst(greeting: Buffer): Promise<{ server: Server; uri: string; received: Promise<string> }> {
  let done!: (h: string) => void;
  const received = new Promise<string>((r) => (done = r));
  const server = createServer({ allowHalfOpen: true }, (s: Socket) => {
    const h = createHash('sha256');
    s.on('data', (c: Buffer) => h.update(c));
    s.on('end', () => done(h.digest('hex')));
    s.on('error', () => {});
    s.end(greeting);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { server, uri: `tcp://127.0.0.1:${port}`, received };
}

if (!IN_VM) {
  test.skip('pre-issued rdma slots: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('a Connect naming a pre-issued rdma slot is answered linked: no BIND, bytes intact both ways, a server that speaks first too', async (t) => {
    const { echo, sdk } = await setup(t, { max_preissued_slots: 4 });
    const first = await within(sdk.connect(echo.uri), T_MS, 'first connect');
    t.is(first.transport, 'rdma');
    const second = await within(sdk.connect(echo.uri), T_MS, 'second connect');
    t.is(second.transport, 'rdma');
    const s = primary(sdk);
    t.true((s.preissued?.size ?? 0) > 0, 'the second answer pre-issued slots');
    t.true(s.preissued!.size <= 4, `at most max_preissued_slots (${s.preissued!.size})`);
    const before = binds;
    const third = await within(sdk.connect(echo.uri), T_MS, 'third connect');
    t.is(third.transport, 'rdma');
    t.is(binds, before, 'the third socket rides a pre-issued slot: no BIND');
    await echoed(t, third, 4 << 20, 'linked socket');
    const greeting = randomBytes(1 << 20);
    const srv = await speaksFirst(greeting);
    t.teardown(() => srv.server.close());
    const fourth = await within(sdk.connect(srv.uri), T_MS, 'connect to a server that speaks first');
    t.is(binds, before, 'no BIND for the fourth either');
    const got = hashUntilEnd(fourth);
    const up = await sendRandom(fourth, 2 << 20);
    const down = await within(got, T_MS, 'greeting');
    t.is(down.bytes, greeting.length);
    t.is(down.sha256, sha(greeting));
    t.is(await within(srv.received, T_MS, 'upload at the server'), up);
    await echoed(t, first, 1 << 20, 'first socket');
    await echoed(t, second, 1 << 20, 'second socket');
  });

  test.serial('a Connect naming a slot in use is refused (ERR_SOCKGATE_SLOT_REFUSED); the session carries the next socket', async (t) => {
    const { echo, sdk } = await setup(t, { max_preissued_slots: 4 });
    const a = await within(sdk.connect(echo.uri), T_MS, 'first connect');
    const b = await within(sdk.connect(echo.uri), T_MS, 'second connect');
    const s = primary(sdk);
    // Swap the pool for the slot the open first socket rides: the gateway must refuse it.
    const busy = [...s.slots.keys()][0]!;
    const held: number[] = [];
    for (let n = s.preissued!.take(() => true); n !== undefined; n = s.preissued!.take(() => true)) held.push(n);
    s.preissued!.put(busy);
    const slotsBefore = s.slots.size;
    // The pool only names slots free here: name `busy` as if it were.
    const take = s.preissued!.take.bind(s.preissued);
    s.preissued!.take = () => take(() => true);
    const err = await t.throwsAsync(within(sdk.connect(echo.uri), T_MS, 'refused connect'));
    t.is((err as { code?: string }).code, 'ERR_SOCKGATE_SLOT_REFUSED', err?.message);
    t.false(s.preissued!.has(busy), 'a refused slot leaves the pool');
    s.preissued!.take = take;
    t.is(s.slots.size, slotsBefore);
    for (const n of held) s.preissued!.put(n);
    const c = await within(sdk.connect(echo.uri), T_MS, 'connect after the refusal');
    t.is(c.transport, 'rdma');
    await echoed(t, a, 1 << 20, 'the socket on the slot named');
    await echoed(t, b, 1 << 20, 'second socket');
    await echoed(t, c, 1 << 20, 'socket after the refusal');
  });

  test.serial('a pre-issued slot given back with CLOSE is freed on the gateway; the connection carries on', async (t) => {
    const { gw, echo, sdk } = await setup(t, { max_preissued_slots: 4 });
    const a = await within(sdk.connect(echo.uri), T_MS, 'first connect');
    const b = await within(sdk.connect(echo.uri), T_MS, 'second connect');
    const s = primary(sdk);
    const book = (gw.gateway as unknown as { rdma: RdmaTransport }).rdma.sessions;
    const gs = book.byId.get(s.id)!;
    t.is(gs.preissued, s.preissued!.size, 'both ends count the same pre-issued slots');
    const n = s.preissued!.take(() => true)!;
    t.is(gs.slots.get(n)?.state, 'issued');
    s.giveBack(native!, n);
    t.true(await eventually(() => !gs.slots.has(n) && !s.slots.has(n), T_MS), 'the given-back slot freed on both ends');
    t.is(gs.preissued, s.preissued!.size);
    t.is(s.state, 'established', 'the CLOSE of a free slot did not break the connection');
    const c = await within(sdk.connect(echo.uri), T_MS, 'connect after the give-back');
    t.is(c.transport, 'rdma');
    await echoed(t, a, 1 << 20, 'first socket');
    await echoed(t, b, 1 << 20, 'second socket');
    await echoed(t, c, 1 << 20, 'socket after the give-back');
  });

  test.serial('a slot the gateway linked for a Connect whose answer the client never used: CLOSE ends the host socket and frees the slot', async (t) => {
    const { gw, echo, sdk } = await setup(t, { max_preissued_slots: 4 });
    const a = await within(sdk.connect(echo.uri), T_MS, 'first connect');
    const b = await within(sdk.connect(echo.uri), T_MS, 'second connect');
    const s = primary(sdk);
    const gs = (gw.gateway as unknown as { rdma: RdmaTransport }).rdma.sessions.byId.get(s.id)!;
    // A host server that tells when its socket ends, and how.
    let ended!: (how: string) => void;
    const hostEnd = new Promise<string>((r) => (ended = r));
    const host = createServer((sock: Socket) => {
      sock.on('error', (err: NodeJS.ErrnoException) => ended(err.code ?? err.message));
      sock.on('end', () => ended('end'));
      sock.on('close', () => ended('close'));
      sock.resume();
    });
    await new Promise<void>((r) => host.listen(0, '127.0.0.1', r));
    t.teardown(() => host.close());
    // The Connect of "unknown outcome": made here on the raw API, so the SDK never sees its answer.
    const n = s.preissued!.take(() => true)!;
    const raw = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
    t.teardown(() => raw.close());
    const res = await rpc(raw, raw.connect, {
      uri: `tcp://127.0.0.1:${(host.address() as { port: number }).port}`,
      offers: [{ kind: TransportKind.TRANSPORT_KIND_RDMA, version: 2, params: { $case: 'rdma', rdma: { address: '', ringBytes: 1 << 20, sessionId: s.id, preissue: 0, slot: n } } }],
      timeoutMs: 0,
      options: [],
    });
    const p = res.negotiation?.accepted?.params;
    t.true(p?.$case === 'rdma' && p.rdma.linked && p.rdma.slot === n, 'the gateway linked the named slot');
    t.is(gs.slots.get(n)?.state, 'open');
    s.giveBack(native!, n);
    // Ended, never left open. Whether the gateway's close reaches the host as RST or FIN is not settled:
    // a CI run saw a clean end where the helper's runs saw resets (see native/RDMA.md "Pre-issued slots").
    const how = await within(hostEnd, T_MS, 'the host socket ends');
    t.log(`the host socket ended with: ${how}`);
    t.true(await eventually(() => !gs.slots.has(n) && !s.slots.has(n), T_MS), 'the slot is free on both ends');
    t.is(s.state, 'established');
    await echoed(t, a, 1 << 20, 'first socket');
    await echoed(t, b, 1 << 20, 'second socket');
  });

  test.serial('old flow: an SDK that asks for none and a gateway that issues none BIND every later socket', async (t) => {
    for (const [gwRdma, sdkRdma, what] of [
      [{ max_preissued_slots: 4 }, { preissue: 0 }, 'SDK asks for none'],
      [{ max_preissued_slots: 0 }, {}, 'gateway issues none'],
    ] as const) {
      const { echo, sdk } = await setup(t, gwRdma, sdkRdma);
      const socks: Duplex[] = [await within(sdk.connect(echo.uri), T_MS, `${what}: first connect`)];
      const before = binds;
      for (let i = 0; i < 3; i++) socks.push(await within(sdk.connect(echo.uri), T_MS, `${what}: connect ${i}`));
      t.is(binds - before, 3, `${what}: each later socket BINDs`);
      t.is(primary(sdk).preissued?.size ?? 0, 0, `${what}: nothing pre-issued`);
      for (const [i, s] of socks.entries()) await echoed(t, s, 256 << 10, `${what}: socket ${i}`);
    }
  });
}
