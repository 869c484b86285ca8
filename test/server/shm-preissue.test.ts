/**
 * Pre-issued shm slots (issue 16: one round trip to open a socket; native/SHM.md
 * "Pre-issued slots"): once its session is attached the SDK holds slots the
 * gateway pre-issued, names one in each Connect, and finds its socket linked
 * when the Connect answers, so it sends no BIND (counted on the session's
 * control stream). Bytes both ways are SHA-256 checked, a server that speaks
 * first included. Naming a slot of another tenant's session, an unissued one
 * or one in use is refused ERR_SOCKGATE_SLOT_REFUSED and creates no socket;
 * the pre-issue bound holds; a denied or refused Connect gives its slot back;
 * clients that do not pre-issue, and a gateway that issues none, keep the
 * reserve + BIND flow.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { credentials } from '@grpc/grpc-js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import type { ShmClient } from '../../clients/sdk/attach-shm.js';
import { SocketGatewayServiceClient, SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { CtlType, readBootId } from '../../proto/shm-wire.js';
import { ConnectRefusedError, GatewayUnavailableError, PolicyDeniedError } from '../../proto/errors.js';
import { echoServer, hashUntilEnd, readAll, sendRandom, startGateway, within, type TestGateway } from '../helpers/harness.js';
import { bearer, eventually, rpc, rpcError } from '../helpers/rpc.js';

const GOOD = 'preissue-good-token-0123456789abcdef';
const EVIL = 'preissue-evil-token-0123456789abcdef';
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Sess {
  id: string;
  preissued: { size: number; has(n: number): boolean; take(u: (n: number) => boolean): number | undefined };
  sent: Map<CtlType, number>;
}
const sessionsOf = (sdk: SdkGateway) => [...((sdk.shmClient as unknown as { sessions: Map<string, Sess> } | undefined)?.sessions.values() ?? [])];
const binds = (sdk: SdkGateway) => sessionsOf(sdk).reduce((n, s) => n + (s.sent.get(CtlType.BIND) ?? 0), 0);
const shmOf = (gw: TestGateway) => (gw.gateway as unknown as { shm: { ringBytes(): number; preissuedOf(id: string): number } }).shm;

/** A gateway with two tenants (good, evil), a deny rule for port `denied`, and an SDK of `good` with `sdk` options. */
async function setup(t: ExecutionContext, shm: Record<string, unknown> = {}, sdk: Record<string, unknown> = {}, denied = 9) {
  const gw = await startGateway(
    {
      anonymous: { enabled: false, admin: false },
      identities: [
        { name: 'good', tokens: [GOOD] },
        { name: 'evil', tokens: [EVIL] },
      ],
      rules: [
        { name: 'deny-one', action: 'deny', destinations: ['127.0.0.1'], ports: [denied] },
        { name: 'loopback', action: 'allow', destinations: ['127.0.0.1'], ports: ['1-65535'] },
      ],
      transports: { shm },
    },
    { transports: ['shm'], token: GOOD, ...sdk },
  );
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  return { gw, echo, sdk: gw.sdk };
}

async function echoCheck(sock: Awaited<ReturnType<SdkGateway['connect']>>, bytes: number): Promise<[string, string]> {
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, bytes, 16 * 1024);
  return [(await within(got, 10_000, 'echo')).sha256, sent];
}

/** Count the slots the SDK names in its Connects. */
function watchNames(sdk: SdkGateway): number[] {
  const client = sdk.shmClient as ShmClient;
  const named: number[] = [];
  const orig = client.name.bind(client);
  client.name = (o) => {
    const n = orig(o);
    if (n) named.push(n.offer.slot);
    return n;
  };
  return named;
}

test.serial('after the first two, connects name a pre-issued slot and send no BIND; bytes intact both ways, a server speaking first too', async (t) => {
  const { gw, echo, sdk } = await setup(t);
  const greeting = randomBytes(50_000);
  const greeter = createServer((c: Socket) => {
    c.on('error', () => {});
    c.end(greeting);
  });
  greeter.listen(0, '127.0.0.1');
  await once(greeter, 'listening');
  t.teardown(() => greeter.close());
  const greetUri = `tcp://127.0.0.1:${(greeter.address() as { port: number }).port}`;

  // First: attaches the session (hello). Second: BINDs, and asks for pre-issued slots.
  for (let i = 0; i < 2; i++) {
    const s = await sdk.connect(echo.uri);
    const [got, sent] = await echoCheck(s, 100_000);
    t.is(got, sent);
  }
  t.is(binds(sdk), 1, 'the second socket bound its slot over the session');
  const [sess] = sessionsOf(sdk);
  t.true(sess!.preissued.size > 0, 'the gateway pre-issued slots with the second answer');
  const named = watchNames(sdk);
  for (let i = 0; i < 6; i++) {
    const s = await sdk.connect(echo.uri);
    t.is(s.transport, 'shm');
    const [got, sent] = await echoCheck(s, 300_000);
    t.is(got, sent, `echo ${i}`);
    const g = await sdk.connect(greetUri);
    t.is(g.transport, 'shm');
    t.is(sha(await within(readAll(g), 10_000, 'greeting')), sha(greeting), `greeting ${i}`);
  }
  t.is(named.length, 12, 'every later connect named a pre-issued slot');
  t.is(binds(sdk), 1, 'and none of them sent a BIND');
  t.is(sessionsOf(sdk).length, 1);
  t.true(shmOf(gw).preissuedOf(sess!.id) > 0, 'the pool is topped up by the answers');
});

test.serial('naming another tenant\'s slot, an unissued slot, or a slot twice is refused ERR_SOCKGATE_SLOT_REFUSED; no socket is made', async (t) => {
  const { gw, echo, sdk } = await setup(t);
  for (let i = 0; i < 2; i++) (await sdk.connect(echo.uri)).destroy();
  const [sess] = sessionsOf(sdk);
  t.truthy(sess);
  const slot = sess!.preissued.take(() => true)!;
  t.true(slot > 0, 'good holds a pre-issued slot');
  const raw = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(() => raw.close());
  const hostId = readBootId((p) => readFileSync(p, 'utf8'));
  const connect = (token: string, slotNo: number) =>
    rpc(raw, raw.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: { $case: 'shm', shm: { ringBytes: 0, hostId, sessionId: sess!.id, preissue: 0, slot: slotNo } } }], timeoutMs: 0, options: [] }, bearer(token));
  t.true(await eventually(() => gw.gateway.table.size === 0, 10_000), 'the first two sockets are gone');

  const evil = await rpcError(connect(EVIL, slot));
  t.is(evil.errorCode, 'ERR_SOCKGATE_SLOT_REFUSED');
  t.regex(evil.details, /not pre-issued to identity "evil"/);
  t.notRegex(evil.details, /good/, 'nothing about the owner leaks');
  const unissued = await rpcError(connect(GOOD, 1000));
  t.is(unissued.errorCode, 'ERR_SOCKGATE_SLOT_REFUSED');
  t.regex(unissued.details, /slot 1000 .* is not pre-issued/);
  t.is(gw.gateway.table.size, 0, 'refused Connects made no socket');

  // The owner's Connect takes it (linked at once); naming it again is refused.
  const first = await rpc(raw, raw.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: { $case: 'shm', shm: { ringBytes: 0, hostId, sessionId: sess!.id, preissue: 0, slot } } }], timeoutMs: 0, options: [] }, bearer(GOOD));
  const p = first.negotiation?.accepted?.params;
  t.true(p?.$case === 'shm' && p.shm.linked && p.shm.slot === slot, 'linked to the named slot');
  const info = await rpc(raw, raw.getInfo, { socketId: first.socketId }, bearer(GOOD));
  t.is(info.info?.state, SocketState.SOCKET_STATE_OPEN, 'open when the Connect answered: no attach followed');
  const twice = await rpcError(connect(GOOD, slot));
  t.is(twice.errorCode, 'ERR_SOCKGATE_SLOT_REFUSED');
  t.regex(twice.details, /in use/);
  // The SDK's own sockets are unharmed.
  const s = await sdk.connect(echo.uri);
  const [got, sent] = await echoCheck(s, 50_000);
  t.is(got, sent);
});

test.serial('the pre-issue bound holds, and pre-issued slots count against the session\'s slots', async (t) => {
  const { gw, echo, sdk } = await setup(t, { max_preissued_slots: 3, slots_per_session: 10 });
  const held: Awaited<ReturnType<SdkGateway['connect']>>[] = [];
  const bounded = (when: string) => {
    const [sess] = sessionsOf(sdk);
    t.true(sess!.preissued.size <= 3, `${when}: the SDK holds ${sess!.preissued.size}`);
    t.true(shmOf(gw).preissuedOf(sess!.id) <= 3, `${when}: the gateway counts ${shmOf(gw).preissuedOf(sess!.id)}`);
  };
  for (let i = 0; i < 3; i++) {
    held.push(await sdk.connect(echo.uri));
    bounded(`after connect ${i}`);
  }
  const [sess] = sessionsOf(sdk);
  t.is(shmOf(gw).preissuedOf(sess!.id), 3, 'topped up to the bound');
  // A client asking for far more gets none past the bound.
  const raw = new SocketGatewayServiceClient(gw.target, credentials.createInsecure());
  t.teardown(() => raw.close());
  const hostId = readBootId((p) => readFileSync(p, 'utf8'));
  const res = await rpc(raw, raw.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: { $case: 'shm', shm: { ringBytes: 0, hostId, sessionId: sess!.id, preissue: 1000, slot: 0 } } }], timeoutMs: 0, options: [] }, bearer(GOOD));
  const p = res.negotiation?.accepted?.params;
  t.true(p?.$case === 'shm' && p.shm.preissuedSlots.length === 0, 'none past the bound');
  bounded('after asking for 1000');
  // 9 socket slots: 3 sockets + 1 raw reservation + 3 pre-issued leave 2; the sockets after those overflow, still on shm.
  for (let i = 0; i < 6; i++) held.push(await sdk.connect(echo.uri));
  t.true(held.every((s) => s.transport === 'shm'));
  t.true(sessionsOf(sdk).length >= 2, 'a full session (pre-issued slots included) overflowed');
  for (const s of held) {
    const [got, sent] = await echoCheck(s, 20_000);
    t.is(got, sent);
  }
});

test.serial('a denied or refused Connect gives its named slot back; ring bytes return; one of unknown outcome is aborted', async (t) => {
  const closed = await new Promise<number>((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
  const { gw, echo, sdk } = await setup(t, {}, {}, 9);
  for (let i = 0; i < 2; i++) (await sdk.connect(echo.uri)).destroy();
  const [sess] = sessionsOf(sdk);
  const named = watchNames(sdk);
  const pool = sess!.preissued.size;
  t.true(pool > 0);
  await t.throwsAsync(sdk.connect('tcp://127.0.0.1:9'), { instanceOf: PolicyDeniedError });
  await t.throwsAsync(sdk.connect(`tcp://127.0.0.1:${closed}`), { instanceOf: ConnectRefusedError });
  t.is(named.length, 2, 'both named a slot');
  t.true(sess!.preissued.has(named[0]!) && sess!.preissued.has(named[1]!), 'both slots are back in the pool');
  t.is(sess!.preissued.size, pool);
  t.is(shmOf(gw).preissuedOf(sess!.id), pool, 'and pre-issued on the gateway again');
  const base = shmOf(gw).ringBytes();
  const s = await sdk.connect(echo.uri);
  const [got, sent] = await echoCheck(s, 50_000);
  t.is(got, sent);
  t.is(binds(sdk), 1, 'still no BIND after the first two');
  s.destroy();
  t.true(await eventually(() => shmOf(gw).ringBytes() === base, 10_000), `ring bytes back to ${base} (now ${shmOf(gw).ringBytes()})`);
  // A Connect whose outcome is unknown (the call was cut): the slot goes back to the gateway (ABORT), not to the pool.
  const before = shmOf(gw).preissuedOf(sess!.id);
  const lease = (sdk.shmClient as ShmClient).name((sdk.shmClient as ShmClient).offer())!;
  lease.settle(undefined, new GatewayUnavailableError('Connection dropped'));
  // The SDK retries such a Connect without the slot; that answer settles nothing more.
  lease.settle(undefined);
  t.false(sess!.preissued.has(lease.offer.slot), 'not back in the pool');
  t.is(sess!.sent.get(CtlType.ABORT) !== undefined, true);
  t.true(await eventually(() => shmOf(gw).preissuedOf(sess!.id) === before - 1, 10_000), 'the gateway freed it');
});

test.serial('old flow: an SDK that does not pre-issue, and a gateway that issues none, BIND every later socket', async (t) => {
  for (const [shm, sdk, what] of [
    [{}, { shm: { preissue: 0 } }, 'SDK preissue 0'],
    [{ max_preissued_slots: 0 }, {}, 'gateway max_preissued_slots 0'],
  ] as const) {
    const { echo, sdk: client } = await setup(t, shm, sdk);
    (await client.connect(echo.uri)).destroy(); // attaches the session; the shm client exists from here
    const named = watchNames(client);
    for (let i = 0; i < 5; i++) {
      const s = await client.connect(echo.uri);
      t.is(s.transport, 'shm', what);
      const [got, sent] = await echoCheck(s, 100_000);
      t.is(got, sent, `${what}: echo ${i}`);
    }
    t.is(named.length, 0, `${what}: no slot named`);
    t.is(binds(client), 5, `${what}: every socket after the first BINDs`);
  }
});
