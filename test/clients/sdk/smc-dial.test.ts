/**
 * The SDK's `smc` option (clients/sdk/smc-dial.ts) on a host without kernel
 * SMC (AF_SMC fails here: EAFNOSUPPORT, or the module is absent): a 'prefer'
 * dial falls back to plain TCP, carries every byte (SHA-256), and says why in
 * the socket's dataConnection(); the option is validated; a gateway with
 * smc.peer_dial: prefer reaches its peer the same way and reports the peer
 * data connection as its host socket. SMC-R itself: test/rdma/vm/smc-lab.ts.
 */
import test from 'ava';
import { Gateway as SdkGateway, InvalidArgumentError, type DataConnectionInfo } from '../../../clients/sdk/index.js';
import { smcDialOf } from '../../../clients/sdk/smc-dial.js';
import { smcSupport } from '../../../native/smc.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../../helpers/harness.js';

const BYTES = 4 << 20;
const T_MS = 30_000;
/** What a 'prefer' dial says on a host whose kernel has no SMC (native/src/smc.cc unavailable_reason). */
const NO_SMC_HERE = /^smc unavailable: (this kernel has no SMC \(AF_SMC\)|socket\(AF_SMC\)|the native addon did not load)/;

test('smc option: off and prefer are taken, anything else is refused by name', async (t) => {
  t.is(smcDialOf({}), 'off');
  t.is(smcDialOf({ smc: 'off' }), 'off');
  t.is(smcDialOf({ smc: 'prefer' }), 'prefer');
  for (const smc of ['always', true, 1, 'PREFER']) t.throws(() => smcDialOf({ smc }), { instanceOf: InvalidArgumentError, message: /GatewayOptions\.smc must be 'off' or 'prefer'/ });
  await t.throwsAsync(() => SdkGateway.connect('127.0.0.1:1', { smc: 'always' as never }), { instanceOf: InvalidArgumentError });
});

test('smc: prefer without kernel SMC: plain TCP data connections with the reason, every byte intact', async (t) => {
  if (smcSupport.available) return t.pass('this kernel has SMC: the SMC path runs in the VM lab');
  const echo = await echoServer();
  const gw = await startGateway({}, { transports: ['tcp'], smc: 'prefer' });
  const off = await SdkGateway.connect(gw.target, { transports: ['tcp'] });
  t.teardown(async () => {
    off.close();
    await gw.stop();
    await echo.close();
  });
  // Twice: the first attach learns the data port, the second opens its data connection alongside the Connect (tcp-parallel.ts).
  for (let i = 0; i < 2; i++) {
    const sock = await within(gw.sdk.connect(echo.uri), T_MS, 'connect with smc: prefer');
    t.is(sock.transport, 'tcp');
    const dc = sock.dataConnection() as DataConnectionInfo;
    t.is(dc.proto, 'tcp', `round ${i}`);
    t.is(dc.smcMode, '');
    t.regex(dc.detail, NO_SMC_HERE, `round ${i}: ${dc.detail}`);
    const got = hashUntilEnd(sock);
    const sent = await sendRandom(sock, BYTES);
    const echoed = await within(got, T_MS, 'echo');
    t.is(echoed.bytes, BYTES);
    t.is(echoed.sha256, sent);
  }
  // smc off: plain tcp, nothing to explain.
  const plain = await within(off.connect(echo.uri), T_MS, 'connect with smc off');
  t.deepEqual(plain.dataConnection(), { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' });
  plain.destroy();
  // openStream (what a gateway uses for peers) tells the same.
  const opened = await within(gw.sdk.openStream(echo.uri, { transports: ['tcp'] }), T_MS, 'openStream');
  t.regex(opened.dataConnection()?.detail ?? '', NO_SMC_HERE);
  await opened.close();
});

test('smc.peer_dial: prefer without kernel SMC: the peer route opens on plain TCP, GetInfo says why, bytes intact', async (t) => {
  if (smcSupport.available) return t.pass('this kernel has SMC: the SMC path runs in the VM lab');
  const echo = await echoServer();
  const b = await startGateway();
  const a = await startGateway({ smc: { peer_dial: 'prefer' }, peers: [{ match: { host: '127.0.0.1', ports: String(echo.port) }, via: b.target, transports: ['tcp'] }] }, { transports: ['tcp'] });
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await echo.close();
  });
  const sock = await within(a.sdk.connect(echo.uri), T_MS, 'connect through the peer');
  const info = await a.sdk.getInfo(sock.socketId);
  t.is(info.peer?.via, b.target);
  // A's host socket is its data connection to B: plain tcp, with the reason smc was not used.
  t.is(info.hostSocket?.proto, 'tcp');
  t.regex(info.hostSocket?.detail ?? '', NO_SMC_HERE);
  // B's data port is no SMC listener: no data_connection to report.
  const onB = (await b.sdk.listSockets()).find((s) => s.socketId === info.peer!.socketId);
  t.truthy(onB);
  t.is(onB!.dataConnection, undefined);
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, BYTES);
  const echoed = await within(got, T_MS, 'echo through both gateways');
  t.is(echoed.bytes, BYTES);
  t.is(echoed.sha256, sent);
});

test('smc.peer_dial off: a peer route reports its plain tcp data connection with nothing to explain', async (t) => {
  const echo = await echoServer();
  const b = await startGateway();
  const a = await startGateway({ peers: [{ match: { host: '127.0.0.1', ports: String(echo.port) }, via: b.target, transports: ['tcp'] }] }, { transports: ['tcp'] });
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await echo.close();
  });
  const sock = await within(a.sdk.connect(echo.uri), T_MS, 'connect through the peer');
  t.deepEqual((await a.sdk.getInfo(sock.socketId)).hostSocket, { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' });
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 1 << 20);
  t.is((await within(got, T_MS, 'echo')).sha256, sent);
});
