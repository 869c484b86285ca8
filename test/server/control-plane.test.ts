/**
 * The control listeners the gateway owns (issue 12, findings 5 and 7): uid
 * identities on the Unix control socket through SO_PEERCRED (and never through
 * a VMM's vsock socket), connection bounds per peer and in total, the
 * first-call and idle timeouts, the streams-per-connection setting, and the
 * rate-limited refusal log. Everything on loopback, every wait bounded.
 */
import test from 'ava';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { UnauthenticatedError } from '../../proto/errors.js';
import { admissionKeyOf, RefusalLog } from '../../server/control-admission.js';
import type { Logger } from '../../native/log.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../helpers/harness.js';
import { eventually } from '../helpers/rpc.js';

const native = await import('../../native/index.js').then(
  (m) => m,
  () => undefined,
);

function tmpDir(): string {
  return mkdtempSync(join(tmpdir(), 'sockgate-ctl-'));
}

/** A raw TCP connection to `port` from `localAddress` that never speaks; resolves once connected. */
async function idleConnection(port: number, localAddress: string): Promise<{ sock: Socket; closed: Promise<void> }> {
  const sock = netConnect({ host: '127.0.0.1', port, localAddress });
  sock.on('error', () => {});
  sock.resume(); // read, so the gateway's close is seen
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  await once(sock, 'connect');
  return { sock, closed };
}

function isClosed(c: { sock: Socket }): boolean {
  return c.sock.destroyed || c.sock.readableEnded;
}

test('a uid identity applies on the Unix control socket (SO_PEERCRED), without a token', async (t) => {
  if (!native) return t.pass('skipped: the native addon (SO_PEERCRED) is not built');
  const uid = process.getuid!();
  const dir = tmpDir();
  const gw = await startGateway({
    listen: { control: `unix:${join(dir, 'control.sock')}` },
    transports: { enabled: ['tcp', 'grpc'] },
    identities: [{ name: 'local-user', uids: [uid] }],
  });
  t.teardown(() => gw.stop());
  const echo = await echoServer();
  t.teardown(() => echo.close());
  t.is(gw.target, `unix:${join(dir, 'control.sock')}`);
  // No token, anonymous off (identities are configured): only the peer uid can identify this caller.
  t.false(gw.config.anonymous.enabled);
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp'] });
  const mine = await gw.sdk.listSockets();
  t.deepEqual(mine.map((s) => `${s.socketId}:${s.identity}`), [`${sock.socketId}:local-user`]);
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 256 * 1024);
  const back = await within(got, 10_000, 'echo over the unix-identified socket');
  t.is(back.sha256, sent);
});

test('a Unix control socket whose peer uid maps to no identity is unauthenticated; a VMM vsock socket never maps a uid', async (t) => {
  if (!native) return t.pass('skipped: the native addon (SO_PEERCRED) is not built');
  const dir = tmpDir();
  const uid = process.getuid!();
  // The uid is mapped, but the only Unix listener is a VMM's vsock socket: its peer is the VMM, not a guest.
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    identities: [{ name: 'local-user', uids: [uid] }],
    vsock_uds: { path: join(dir, 'vm.vsock'), control_port: 7070, data_port: 7071 },
  });
  t.teardown(() => gw.stop());
  const viaVmm = await SdkGateway.connect(`unix:${gw.gateway.addresses.vsock!.control}`);
  t.teardown(() => viaVmm.close());
  await t.throwsAsync(viaVmm.listSockets(), { instanceOf: UnauthenticatedError });
  // The same over TCP: no uid there either.
  await t.throwsAsync(gw.sdk.listSockets(), { instanceOf: UnauthenticatedError });

  const other = await startGateway({
    listen: { control: `unix:${join(dir, 'control.sock')}` },
    transports: { enabled: ['tcp', 'grpc'] },
    identities: [{ name: 'someone-else', uids: [uid + 1] }],
  });
  t.teardown(() => other.stop());
  await t.throwsAsync(other.sdk.listSockets(), { instanceOf: UnauthenticatedError });
});

test('control connections are bounded per peer and in total; a legitimate Connect from another peer still succeeds', async (t) => {
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    limits: { max_control_connections: 12, max_control_connections_per_peer: 8, control_first_call_timeout_ms: 0, control_idle_timeout_ms: 0 },
  });
  t.teardown(() => gw.stop());
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const port = Number(gw.target.slice(gw.target.lastIndexOf(':') + 1));
  const conns: { sock: Socket; closed: Promise<void> }[] = [];
  t.teardown(() => conns.forEach((c) => c.sock.destroy()));
  // 20 idle connections from one peer: 8 held, 12 closed by the gateway.
  for (let i = 0; i < 20; i++) conns.push(await idleConnection(port, '127.0.0.2'));
  t.true(await eventually(() => conns.filter(isClosed).length === 12, 5_000), `closed: ${conns.filter(isClosed).length}`);
  t.is(gw.gateway.controlAdmission.refusedTotal.per_peer, 12);
  // The caller on 127.0.0.1 is another peer: its Connect works, bytes checked.
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp'] });
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 128 * 1024);
  t.is((await within(got, 10_000, 'echo')).sha256, sent);
  // A third peer fills the total (12 = 8 + the SDK's 1 + 3): the rest of its 6 are closed.
  const more: { sock: Socket; closed: Promise<void> }[] = [];
  t.teardown(() => more.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < 6; i++) more.push(await idleConnection(port, '127.0.0.3'));
  t.true(await eventually(() => more.filter(isClosed).length === 3, 5_000), `closed: ${more.filter(isClosed).length}`);
  t.is(gw.gateway.controlAdmission.refusedTotal.total, 3);
  // Closing the idle ones frees the slots: a new SDK connection from 127.0.0.1 gets in.
  for (const c of [...conns, ...more]) c.sock.destroy();
  t.true(await eventually(() => gw.gateway.controlAdmission.open <= 1, 5_000));
  const again = await SdkGateway.connect(gw.target);
  t.teardown(() => again.close());
  const second = await again.connect(echo.uri, { transports: ['tcp'] });
  const got2 = hashUntilEnd(second);
  const sent2 = await sendRandom(second, 64 * 1024);
  t.is((await within(got2, 10_000, 'echo after the refusals')).sha256, sent2);
});

test('a control connection that makes no call is closed after control_first_call_timeout_ms; one that made a call is not', async (t) => {
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    limits: { control_first_call_timeout_ms: 300, control_idle_timeout_ms: 0 },
  });
  t.teardown(() => gw.stop());
  const port = Number(gw.target.slice(gw.target.lastIndexOf(':') + 1));
  const idle = await idleConnection(port, '127.0.0.2');
  t.teardown(() => idle.sock.destroy());
  await within(idle.closed, 10_000, 'the idle connection is closed');
  t.true(gw.gateway.controlAdmission.refusedTotal.first_call_timeout >= 1);
  // An identified call clears the timer: the connection stays usable for calls after the timeout.
  const sdk = await SdkGateway.connect(gw.target);
  t.teardown(() => sdk.close());
  await sdk.listSockets();
  const before = gw.gateway.controlAdmission.refusedTotal.first_call_timeout;
  await new Promise((r) => setTimeout(r, 600));
  await sdk.listSockets();
  t.is(gw.gateway.controlAdmission.refusedTotal.first_call_timeout, before);
});

test('an HTTP/2 connection with no call in flight is closed after control_idle_timeout_ms; streams per connection are advertised', async (t) => {
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    limits: { control_first_call_timeout_ms: 0, control_idle_timeout_ms: 300, max_control_streams_per_connection: 7 },
  });
  t.teardown(() => gw.stop());
  const session = http2Connect(`http://${gw.target}`);
  session.on('error', () => {});
  t.teardown(() => session.destroy());
  const closed = once(session, 'close');
  await within(once(session, 'remoteSettings'), 5_000, 'server SETTINGS');
  t.is(session.remoteSettings.maxConcurrentStreams, 7);
  await within(closed, 10_000, 'the idle session is closed');

  // An SDK client idle past the timeout reconnects for its next call, and a socket it opened keeps working.
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp'] });
  const got = hashUntilEnd(sock);
  await new Promise((r) => setTimeout(r, 1_000));
  t.is((await gw.sdk.getInfo(sock.socketId)).socketId, sock.socketId);
  await new Promise((r) => setTimeout(r, 1_000));
  const sent = await sendRandom(sock, 256 * 1024);
  t.is((await within(got, 10_000, 'echo after idle timeouts')).sha256, sent);
});

test('refusal log lines are rate-limited: one line per interval, with the count', async (t) => {
  const lines: { refused: Record<string, number> }[] = [];
  const logger = { warn: (obj: { refused: Record<string, number> }) => lines.push(obj) } as unknown as Logger;
  const log = new RefusalLog(logger, 200);
  for (let i = 0; i < 1000; i++) log.note('limits.max_control_connections_per_peer');
  await eventually(() => lines.length === 1, 2_000);
  t.deepEqual(lines, [{ refused: { 'limits.max_control_connections_per_peer': 1000 } }]);
  for (let i = 0; i < 500; i++) log.note('limits.max_control_connections');
  log.note('limits.control_first_call_timeout_ms');
  t.is(lines.length, 1, 'nothing more within the interval');
  await eventually(() => lines.length === 2, 2_000);
  t.deepEqual(lines[1], { refused: { 'limits.max_control_connections': 500, 'limits.control_first_call_timeout_ms': 1 } });
});


test('admission counts a peer once whatever form its address takes; Unix peers by uid, VMM sockets by path', (t) => {
  t.is(admissionKeyOf({ kind: 'tcp', address: '::ffff:10.1.2.3', port: 1 }), admissionKeyOf({ kind: 'tcp', address: '10.1.2.3', port: 2 }));
  t.not(admissionKeyOf({ kind: 'tcp', address: '10.1.2.3', port: 1 }), admissionKeyOf({ kind: 'tcp', address: '10.1.2.4', port: 1 }));
  t.is(admissionKeyOf({ kind: 'unix', uid: 7, gid: 1, pid: 10 }), admissionKeyOf({ kind: 'unix', uid: 7, gid: 2, pid: 11 }));
  t.not(admissionKeyOf({ kind: 'unix', uid: 7, gid: 1, pid: 10 }), admissionKeyOf({ kind: 'unix', uid: 8, gid: 1, pid: 10 }));
  t.not(admissionKeyOf({ kind: 'vmm', path: '/a' }), admissionKeyOf({ kind: 'vmm', path: '/b' }));
});
