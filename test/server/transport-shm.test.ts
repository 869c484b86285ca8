/**
 * The shm data plane end to end: SDK -> gateway (shm) -> TCP destination on
 * loopback, with every transfer checked by SHA-256: 256 MiB each way, 64
 * sockets at once in one session, half-close both ways, fallbacks
 * (NOT_COLOCATED, RESOURCE_LIMIT) visible on the socket and in
 * sockgate_fallbacks_total, the SO_PEERCRED identity check, a hostile client
 * process scribbling its shared memory while another session's transfer
 * completes intact, ring autotuning, and a graceful stop that removes the
 * attach socket.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket as SdkSocket } from '../../clients/sdk/socket.js';
import { SHM_METRICS, isLocalPeer } from '../../server/transport-shm.js';
import { AttachRegistry } from '../../server/attach.js';
import { loadConfig } from '../../server/config.js';
import { Negotiator } from '../../server/negotiate.js';
import { Policy } from '../../server/policy.js';
import type { GatewayMetrics } from '../../server/telemetry.js';
import { DeclineReason, TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import type { GatewaySocket } from '../../server/socket-table.js';
import { echoServer, hashUntilEnd, readAll, sendRandom, startGateway, tcpServer, within, type TestGateway } from '../helpers/harness.js';
import { eventually, metricSum, scrape } from '../helpers/rpc.js';

const MiB = 1 << 20;
const HOSTILE_CHILD = join(dirname(fileURLToPath(import.meta.url)), 'shm-hostile-child.js');
const prom = (name: string) => `${name.replace(/\./g, '_')}_total`;

/** A gateway whose shm attach socket lives in a fresh directory (tests never share /run/sockgate). */
async function shmGateway(t: ExecutionContext, overrides: Record<string, unknown> = {}, sdk: Record<string, unknown> = {}): Promise<TestGateway & { dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-shm-test-'));
  const o = overrides as { transports?: Record<string, unknown> };
  const gw = await startGateway(
    { ...overrides, transports: { ...(o.transports ?? {}), shm: { path: join(dir, 'shm.sock'), ...((o.transports?.['shm'] as object) ?? {}) } } },
    { transports: ['shm', 'tcp'], ...sdk },
  );
  t.teardown(async () => {
    await gw.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { ...gw, dir };
}

test('without the addon shm is not in the transports map, and the decline says why', async (t) => {
  const policy = new Policy(loadConfig());
  const fallbacks: string[] = [];
  const metrics = { recordFallback: (tr: string, reason: string) => fallbacks.push(`${tr}/${reason}`) } as unknown as GatewayMetrics;
  const n = new Negotiator(new Map(), new Set(['shm', 'tcp'] as const), policy, new AttachRegistry(1000), metrics, (kind) =>
    kind === TransportKind.TRANSPORT_KIND_SHM ? 'the native addon did not load (sockgate native addon not built)' : undefined,
  );
  const d = await n.decide([{ kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: undefined }], { identity: policy.identify({}), socketKind: 'stream', peer: '127.0.0.1:1' });
  t.is(d.accepted, undefined);
  t.is(d.fallbacks[0]?.reason, DeclineReason.DECLINE_REASON_UNSUPPORTED);
  t.is(d.fallbacks[0]?.detail, 'transport shm is not available in this build: the native addon did not load (sockgate native addon not built)');
  t.deepEqual(fallbacks, ['shm/UNSUPPORTED']);
});

test('isLocalPeer: loopback and Unix-socket peers only', (t) => {
  for (const p of ['127.0.0.1:5000', '127.8.9.1:1', '::1:4000', '[::1]:4000', '::ffff:127.0.0.1:99', 'unknown', 'unix:/run/x.sock']) t.true(isLocalPeer(p), p);
  for (const p of ['10.0.0.1:5000', '192.168.1.2:1', '2001:db8::1:80', '::ffff:10.0.0.1:99', 'garbage', '']) t.false(isLocalPeer(p), p);
});

test.serial('256 MiB echo through shm keeps every byte (SHA-256 both ends); the rings grow under load', async (t) => {
  t.timeout(120_000);
  const gw = await shmGateway(t);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const sock = await gw.sdk.connect(echo.uri);
  t.is(sock.transport, 'shm');
  t.deepEqual(sock.fallbacks, []);
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 256 * MiB);
  const r = await within(got, 90_000, 'echo of 256 MiB');
  t.is(r.bytes, 256 * MiB);
  t.is(r.sha256, sent);
  const text = await scrape(gw.gateway.addresses.metrics!);
  t.true(metricSum(text, prom(SHM_METRICS.grows.name)) > 0, 'autotuning granted larger rings');
  t.true(metricSum(text, 'sockgate_bytes_total', { transport: 'shm', direction: 'out' }) >= 256 * MiB, 'bytes are counted per transport');
});

test.serial('64 sockets at once share one session, each SHA-256 checked', async (t) => {
  t.timeout(120_000);
  const gw = await shmGateway(t);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const socks = await Promise.all(Array.from({ length: 64 }, () => gw.sdk.connect(echo.uri)));
  t.true(socks.every((s) => s.transport === 'shm'), JSON.stringify(socks.map((s) => s.fallbacks)));
  const client = (gw.sdk as unknown as { shmClient: { sessions: Map<string, unknown> } }).shmClient;
  t.is(client.sessions.size, 1, 'one region for all sockets');
  const results = await within(
    Promise.all(
      socks.map(async (s) => {
        const got = hashUntilEnd(s);
        const sent = await sendRandom(s, MiB, 16 * 1024);
        return { sent, got: await got };
      }),
    ),
    90_000,
    '64 echoes',
  );
  for (const r of results) {
    t.is(r.got.bytes, MiB);
    t.is(r.got.sha256, r.sent);
  }
  // Every slot goes back: the gateway's ring bytes return to the session's control slot alone.
  t.true(await eventually(() => gw.gateway.table.size === 0, 10_000), 'gateway sockets closed');
});

test.serial('half-close both ways: the guest ends first, then the destination ends first', async (t) => {
  const gw = await shmGateway(t);
  // Answers after the guest's FIN, then ends.
  const answerAfterFin = await tcpServer((c) => {
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('end', () => c.end(`got ${Buffer.concat(chunks).toString()}, and after your FIN: pong`));
  });
  // Ends first, then reads what the guest still sends.
  const heard: string[] = [];
  const endsFirst = await tcpServer((c) => {
    const chunks: Buffer[] = [];
    c.end('bye first');
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('end', () => heard.push(Buffer.concat(chunks).toString()));
  });
  t.teardown(async () => {
    await answerAfterFin.close();
    await endsFirst.close();
  });
  // 1) guest FIN first: the destination sees EOF and still answers.
  const a = await gw.sdk.connect(answerAfterFin.uri);
  t.is(a.transport, 'shm');
  const aGot = readAll(a);
  a.end('ping');
  t.is((await within(aGot, 10_000, 'answer after the guest FIN')).toString(), 'got ping, and after your FIN: pong');
  // 2) destination FIN first: the guest sees end and can still send.
  const b = await gw.sdk.connect(endsFirst.uri);
  t.is(b.transport, 'shm');
  t.is((await within(readAll(b), 10_000, 'guest sees the destination FIN')).toString(), 'bye first');
  b.end('late words');
  t.true(await eventually(() => heard.length === 1, 10_000), 'the destination heard the guest after its own FIN');
  t.deepEqual(heard, ['late words']);
  t.true(await eventually(() => gw.gateway.table.size === 0, 10_000), 'both gateway sockets closed');
});

test.serial('a client on another host (its host id differs) is declined NOT_COLOCATED and falls back to tcp, visibly', async (t) => {
  const gw = await shmGateway(t, {}, { shm: { hostId: 'some-other-host-boot-id' } });
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const url = gw.gateway.addresses.metrics!;
  const before = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'NOT_COLOCATED' });
  const sock = await gw.sdk.connect(echo.uri);
  t.is(sock.transport, 'tcp');
  t.is(sock.fallbacks.length, 1);
  t.is(sock.fallbacks[0]!.transport, 'shm');
  t.is(sock.fallbacks[0]!.reason, 'NOT_COLOCATED');
  t.regex(sock.fallbacks[0]!.detail, /some-other-host-boot-id/);
  const got = readAll(sock);
  sock.end('still works');
  t.is((await within(got, 10_000, 'echo')).toString(), 'still works');
  const after = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'NOT_COLOCATED' });
  t.is(after - before, 1);
  const info = await gw.sdk.getInfo(sock.socketId).catch(() => undefined);
  if (info) t.is(info.fallbacks[0]?.detail, sock.fallbacks[0]!.detail);
});

test.serial('ring memory caps: over the per-identity cap the offer is declined RESOURCE_LIMIT and the socket rides tcp', async (t) => {
  // control slot 2 x 4 KiB + two sockets of 2 x 16 KiB: the third socket does not fit.
  const cap = 2 * 4096 + 2 * 2 * 16384;
  const gw = await shmGateway(t, { transports: { shm: { initial_ring_bytes: 16384, max_ring_bytes: 65536, max_ring_bytes_per_identity: cap } } });
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const url = gw.gateway.addresses.metrics!;
  const before = metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'RESOURCE_LIMIT' });
  const a = await gw.sdk.connect(echo.uri);
  const b = await gw.sdk.connect(echo.uri);
  t.deepEqual([a.transport, b.transport], ['shm', 'shm']);
  const c = await gw.sdk.connect(echo.uri);
  t.is(c.transport, 'tcp');
  t.is(c.fallbacks[0]?.transport, 'shm');
  t.is(c.fallbacks[0]?.reason, 'RESOURCE_LIMIT');
  t.regex(c.fallbacks[0]!.detail, /cap/);
  t.is(metricSum(await scrape(url), 'sockgate_fallbacks_total', { transport: 'shm', reason: 'RESOURCE_LIMIT' }) - before, 1);
  // Bytes still flow on all three, and autotuning stays within the cap.
  const hashes = await Promise.all(
    [a, b, c].map(async (s) => {
      const got = hashUntilEnd(s);
      const sent = await sendRandom(s, 4 * MiB);
      return { sent, got: (await within(got, 30_000, 'echo')).sha256 };
    }),
  );
  for (const h of hashes) t.is(h.got, h.sent);
  // Once the shm sockets are gone their bytes are free again: a new socket rides shm. A slot's bytes
  // are credited when the client releases it, which may come after the socket left the table.
  const shm = (gw.gateway as unknown as { transports: Map<TransportKind, { ringBytes(): number }> }).transports.get(TransportKind.TRANSPORT_KIND_SHM)!;
  const controlOnly = 2 * 4096;
  t.true(await eventually(() => gw.gateway.table.size === 0 && shm.ringBytes() <= controlOnly, 10_000), `ring bytes still charged: ${shm.ringBytes()}`);
  const d = await gw.sdk.connect(echo.uri);
  t.is(d.transport, 'shm', JSON.stringify(d.fallbacks));
  d.destroy();
});

test.serial('SO_PEERCRED: a session whose uid maps to another identity is refused (counted), the socket falls back', async (t) => {
  const uid = process.getuid!();
  const TOKENS = { owner: 'uid-owner-token-0123456789', other: 'other-ident-token-0123456789' };
  const gw = await shmGateway(
    t,
    {
      anonymous: { enabled: false },
      identities: [
        { name: 'uid-owner', tokens: [TOKENS.owner], uids: [uid] },
        { name: 'someone-else', tokens: [TOKENS.other] },
      ],
    },
    { token: TOKENS.other },
  );
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const url = gw.gateway.addresses.metrics!;
  const sock = await gw.sdk.connect(echo.uri);
  t.is(sock.transport, 'tcp', 'refused over shm, carried by tcp');
  t.is(sock.fallbacks[0]?.transport, 'shm');
  t.is(sock.fallbacks[0]?.reason, 'CONNECT_FAILED');
  t.regex(sock.fallbacks[0]!.detail, /POLICY/);
  const text = await scrape(url);
  t.is(metricSum(text, prom(SHM_METRICS.refused.name), { reason: 'identity' }), 1);
  // The refused session is remembered: the next socket is declined at negotiation (POLICY), naming both identities.
  const again = await gw.sdk.connect(echo.uri);
  t.is(again.transport, 'tcp');
  t.is(again.fallbacks[0]?.reason, 'POLICY');
  t.regex(again.fallbacks[0]!.detail, /uid-owner/);
  t.regex(again.fallbacks[0]!.detail, /someone-else/);
  // The uid's own identity attaches.
  const owner = await SdkGateway.connect(gw.target, { token: TOKENS.owner, transports: ['shm'] });
  t.teardown(() => owner.close());
  const mine = await owner.connect(echo.uri);
  t.is(mine.transport, 'shm');
  const got = readAll(mine);
  mine.end('mine');
  t.is((await within(got, 10_000, 'echo')).toString(), 'mine');
  sock.destroy();
  again.destroy();
});

test.serial('a hostile client process scribbling its region: its session ends with ERR_SOCKGATE_RING_CORRUPT, the gateway and another session are unharmed', async (t) => {
  t.timeout(90_000);
  const gw = await shmGateway(t);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  // Record how every gateway socket ends.
  const endings = new Map<string, string>();
  const table = gw.gateway.table;
  const add = table.add.bind(table);
  table.add = (s: GatewaySocket) => {
    void s.closed.then(() => endings.set(s.id, s.error?.code ?? 'clean'));
    add(s);
  };
  // The good session: this process's SDK, streaming while the hostile one scribbles.
  const good = await gw.sdk.connect(echo.uri);
  t.is(good.transport, 'shm');
  const goodGot = hashUntilEnd(good);
  const goodSent = sendRandom(good, 64 * MiB, 32 * 1024);
  const child = spawn(process.execPath, [HOSTILE_CHILD, gw.target, echo.uri, '3'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  t.is(code, 0, err);
  const res = JSON.parse(out.trim()) as { socketIds: string[]; ended: string[] };
  t.is(res.socketIds.length, 3);
  t.log('hostile side saw:', res.ended.join(', '));
  t.true(res.ended.every((e) => e !== 'still open'), 'the hostile sockets ended');
  t.true(await eventually(() => res.socketIds.every((id) => endings.has(id)), 10_000), 'the gateway closed the hostile sockets');
  const codes = res.socketIds.map((id) => endings.get(id));
  t.true(codes.includes('ERR_SOCKGATE_RING_CORRUPT'), `gateway-side endings: ${codes.join(', ')}`);
  t.true(codes.every((c) => c === 'ERR_SOCKGATE_RING_CORRUPT' || c === 'clean'), codes.join(', '));
  const text = await scrape(gw.gateway.addresses.metrics!);
  t.true(metricSum(text, prom(SHM_METRICS.corrupt.name)) >= 1, 'the corrupt session is counted');
  // The other session's transfer completes intact, and the gateway still serves.
  const sent = await within(goodSent, 60_000, 'good sender');
  const r = await within(goodGot, 60_000, 'good echo');
  t.is(r.bytes, 64 * MiB);
  t.is(r.sha256, sent);
  const after = await gw.sdk.connect(echo.uri);
  t.is(after.transport, 'shm');
  const got = readAll(after);
  after.end('alive');
  t.is((await within(got, 10_000, 'echo after the hostile session')).toString(), 'alive');
});

test.serial('graceful stop: idle shm sockets are aborted after the drain, the client sees the reason, the attach socket is removed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-shm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'shm.sock');
  const gw = await startGateway({ transports: { shm: { path } }, shutdown: { drain_timeout_ms: 300 } }, { transports: ['shm'] });
  const echo = await echoServer();
  t.teardown(async () => {
    gw.sdk.close();
    await echo.close();
  });
  t.true(existsSync(path));
  const sock: SdkSocket = await gw.sdk.connect(echo.uri);
  t.is(sock.transport, 'shm');
  const failed = new Promise<Error>((resolve) => sock.once('error', resolve));
  await within(gw.gateway.stop(), 15_000, 'gateway stop');
  const e = (await within(failed, 5_000, 'client error')) as Error & { code?: string };
  t.is(e.code, 'ERR_SOCKGATE_SHUTTING_DOWN', e.message);
  t.false(existsSync(path), 'attach socket removed');
});

test('datagram sockets are declined KIND_UNSUPPORTED by shm', async (t) => {
  const gw = await shmGateway(t, {}, { transports: ['shm', 'grpc'] });
  const sock = await gw.sdk.udp('udp://127.0.0.1:0', { transports: ['shm', 'grpc'] });
  t.is(sock.transport, 'grpc');
  t.is(sock.fallbacks[0]?.reason, 'KIND_UNSUPPORTED');
  await sock.close();
});

test.serial('a full session spills into overflow sessions of the same client; every socket still rides shm', async (t) => {
  const gw = await shmGateway(t, { transports: { shm: { slots_per_session: 4 } } });
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const socks = await Promise.all(Array.from({ length: 8 }, () => gw.sdk.connect(echo.uri)));
  t.true(socks.every((s) => s.transport === 'shm'), JSON.stringify(socks.map((s) => s.fallbacks)));
  const client = (gw.sdk as unknown as { shmClient: { sessions: Map<string, unknown> } }).shmClient;
  t.is(client.sessions.size, 3, '3 usable slots per session: 8 sockets need 3 sessions');
  const shm = (gw.gateway as unknown as { shm: { sessionCount: number } }).shm;
  t.is(shm.sessionCount, 3);
  const echoes = await Promise.all(
    socks.map(async (s, i) => {
      const got = readAll(s);
      s.end(`socket ${i}`);
      return (await within(got, 10_000, 'echo')).toString();
    }),
  );
  t.deepEqual(echoes, socks.map((_, i) => `socket ${i}`));
});
