/**
 * The tcp data port against unauthenticated peers (issue 12, finding 5, data
 * half): a connection with no complete preamble is closed after
 * limits.data_preamble_timeout_ms; connections still in their preamble are
 * bounded per peer address and in total (more are closed at once); refusals
 * are logged at most once per interval with a count of the suppressed ones.
 */
import test from 'ava';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { credentials } from '@grpc/grpc-js';
import { SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import { LogLimiter } from '../../server/log-limiter.js';
import { createTelemetry } from '../../server/telemetry.js';
import { AttachStatus, encodePreamble } from '../../proto/wire.js';
import type { Logger } from '../../native/log.js';
import { echoServer, hashUntilEnd, sendRandom, TEST_OVERRIDES, within } from '../helpers/harness.js';
import { bearer, eventually, rpc } from '../helpers/rpc.js';
import { tenantConfig, TCP_OFFER, TOKEN } from '../helpers/tenants.js';

interface Started {
  gateway: Gateway;
  host: string;
  port: number;
  /** Log lines written so far (warn and above). */
  lines(): string[];
}

/** An in-process gateway whose warn-level log lines the test can read. */
async function start(t: import('ava').ExecutionContext, limits: Record<string, unknown>): Promise<Started> {
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => (text += c.toString('utf8')));
  const shm = join(mkdtempSync(join(tmpdir(), 'sockgate-shm-')), 'shm.sock');
  const config = loadConfig({ overrides: mergeConfig(mergeConfig(TEST_OVERRIDES, { transports: { shm: { path: shm } }, telemetry: { log_level: 'warn', traces: 'none' } }), tenantConfig(limits)) });
  const telemetry = createTelemetry({ logLevel: 'warn', traces: 'none', metricsListen: '', logDestination: out });
  const gateway = new Gateway(config, { telemetry });
  const addrs = await gateway.start();
  t.teardown(() => gateway.destroy());
  const colon = addrs.data.lastIndexOf(':');
  return { gateway, host: addrs.data.slice(0, colon), port: Number(addrs.data.slice(colon + 1)), lines: () => text.split('\n').filter(Boolean) };
}

interface Idle {
  sock: Socket;
  closed: Promise<void>;
  isClosed(): boolean;
  received(): Buffer;
}

/** A data-port connection that says nothing, from `localAddress`. */
async function idle(g: Started, localAddress = '127.0.0.1'): Promise<Idle> {
  const sock = netConnect({ host: g.host, port: g.port, localAddress });
  let closed = false;
  let got = Buffer.alloc(0);
  sock.on('error', () => {});
  sock.on('data', (c: Buffer) => (got = Buffer.concat([got, c])));
  const p = once(sock, 'close').then(() => {
    closed = true;
  });
  await once(sock, 'connect');
  return { sock, closed: p, isClosed: () => closed, received: () => got };
}

test('unauthenticated data-port connections are bounded per peer address; the ones within the bound still attach and carry bytes (SHA-256)', async (t) => {
  const g = await start(t, { max_unauthenticated_data_connections_per_peer: 3, data_preamble_timeout_ms: 30_000 });
  const conns: Idle[] = [];
  t.teardown(() => conns.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < 8; i++) conns.push(await idle(g));
  t.true(await eventually(() => conns.filter((c) => c.isClosed()).length === 5, 5_000), `closed: ${conns.filter((c) => c.isClosed()).length} of 8`);
  t.deepEqual(conns.slice(0, 3).map((c) => c.isClosed()), [false, false, false], 'the first three wait for their preamble');
  // Another peer address has its own bound.
  const other = [await idle(g, '127.0.0.2'), await idle(g, '127.0.0.2')];
  conns.push(...other);
  await new Promise((r) => setTimeout(r, 300));
  t.false(other.some((c) => c.isClosed()), 'another peer address is not refused for this one');
  // A waiting connection redeems a real token: the refusals did not hurt it.
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const client = new SocketGatewayServiceClient(g.gateway.addresses.control, credentials.createInsecure());
  t.teardown(() => client.close());
  const c = await rpc(client, client.connect, { uri: echo.uri, offers: [TCP_OFFER], timeoutMs: 0, options: [] }, bearer(TOKEN.good));
  const first = conns[0]!;
  first.sock.write(encodePreamble(c.negotiation!.accepted!.attachToken));
  t.true(await eventually(() => first.received().length >= 8, 5_000));
  t.is(first.received().readUInt8(4), AttachStatus.OK);
  const rest = first.received().subarray(8);
  first.sock.removeAllListeners('data');
  if (rest.length) first.sock.unshift(rest);
  const got = hashUntilEnd(first.sock);
  const sent = await sendRandom(first.sock, 1 << 20);
  t.is((await within(got, 10_000, 'echo')).sha256, sent);
});

test('unauthenticated data-port connections are bounded in total (max_unauthenticated_data_connections)', async (t) => {
  const g = await start(t, { max_unauthenticated_data_connections: 4, max_unauthenticated_data_connections_per_peer: 100, data_preamble_timeout_ms: 30_000 });
  const conns: Idle[] = [];
  t.teardown(() => conns.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < 4; i++) conns.push(await idle(g, i % 2 ? '127.0.0.3' : '127.0.0.1'));
  for (let i = 0; i < 3; i++) conns.push(await idle(g, '127.0.0.4'));
  t.true(await eventually(() => conns.filter((c) => c.isClosed()).length === 3, 5_000));
  t.false(conns.slice(0, 4).some((c) => c.isClosed()));
  // A closed waiting connection frees its place.
  conns[0]!.sock.destroy();
  await conns[0]!.closed;
  await new Promise((r) => setTimeout(r, 100));
  const again = await idle(g, '127.0.0.4');
  conns.push(again);
  await new Promise((r) => setTimeout(r, 300));
  t.false(again.isClosed());
});

test('a connection without a complete preamble is closed after data_preamble_timeout_ms, told BAD_PREAMBLE', async (t) => {
  const g = await start(t, { data_preamble_timeout_ms: 300 });
  const c = await idle(g);
  t.teardown(() => c.sock.destroy());
  c.sock.write(Buffer.from('SGA1')); // the start of a preamble, then silence
  await within(c.closed, 3_000, 'closed by the preamble timeout');
  t.is(c.received().readUInt8(4), AttachStatus.BAD_PREAMBLE);
});

test('refusal logs are rate-limited: 60 timed-out or over-limit connections make one line per kind of refusal', async (t) => {
  const g = await start(t, { data_preamble_timeout_ms: 200, max_unauthenticated_data_connections_per_peer: 40, refusal_log_interval_ms: 60_000 });
  const conns: Idle[] = [];
  t.teardown(() => conns.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < 60; i++) conns.push(await idle(g));
  t.true(await eventually(() => conns.every((c) => c.isClosed()), 10_000), 'all closed (20 at once, 40 after the timeout)');
  // Log lines may trail the closes they report on a loaded machine: wait for one of each, then count.
  const of = (what: string) => g.lines().filter((l) => l.includes(what));
  await eventually(() => of('tcp attach rejected').length > 0 && of('tcp data connection refused').length > 0, 5_000);
  const rejected = of('tcp attach rejected');
  const refused = of('tcp data connection refused');
  t.is(rejected.length, 1, rejected.join('\n'));
  t.is(refused.length, 1, refused.join('\n'));
});

test('LogLimiter: one line per key per interval, the next line carries the suppressed count; keys are independent', (t) => {
  const lines: { fields: Record<string, unknown>; msg: string }[] = [];
  const logger = { warn: (fields: Record<string, unknown>, msg: string) => lines.push({ fields, msg }) } as unknown as Logger;
  let now = 0;
  const lim = new LogLimiter(logger, 1_000, () => now);
  t.true(lim.warn('a', { n: 1 }, 'first'));
  for (let i = 0; i < 99; i++) t.false(lim.warn('a', { n: 2 }, 'again'));
  t.true(lim.warn('b', {}, 'other key'));
  t.is(lim.pending, 99);
  now = 1_000;
  t.true(lim.warn('a', { n: 3 }, 'after the interval'));
  t.deepEqual(lines.map((l) => l.msg), ['first', 'other key', 'after the interval']);
  t.is(lines[2]!.fields.suppressed, 99);
  t.is(lines[0]!.fields.suppressed, undefined);
  // Many keys cannot grow it without bound.
  for (let i = 0; i < 10_000; i++) lim.warn(`k${i}`, {}, 'x');
  t.true((lim as unknown as { windows: Map<string, unknown> }).windows.size <= 64);
});
