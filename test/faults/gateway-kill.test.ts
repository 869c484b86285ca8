/**
 * kill -9 of the gateway during 100 concurrent transfers (shm, tcp and grpc
 * planes): every SDK socket ends with an error within seconds (none hangs,
 * none ends as if the stream were complete), and once a gateway is back on
 * the same control address the same SDK object opens new sockets that carry
 * bytes intact (SHA-256).
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { Gateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket, TransportName } from '../../clients/sdk/socket.js';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { echoServer, hashUntilEnd, sendRandom, startChildGateway, within } from '../helpers/harness.js';
import { ending, type Ending } from './helpers.js';

/** Concurrent transfers when the gateway dies. */
const SOCKETS = 100;
/** How long after the kill every socket must have ended (bounds a hang, not a timing claim). */
const END_WITHIN_MS = 20_000;

/** Resolves on 'drain' or 'close', whichever comes first (listeners removed). */
function drainOrClose(s: GatewaySocket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

test('kill -9 of the gateway mid-transfer: every socket errors, the SDK reconnects for new sockets', async (t) => {
  t.timeout(90_000);
  const planes: TransportName[] = shmSupport.available ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'];
  if (!shmSupport.available) t.log(`shm not covered: ${shmSupport.reason}`);
  const echo = await echoServer();
  const g1 = await startChildGateway();
  const port = g1.target.slice(g1.target.lastIndexOf(':') + 1);
  let g2: Awaited<ReturnType<typeof startChildGateway>> | undefined;
  const sdk = await Gateway.connect(g1.target, { deadlineMs: 10_000 });
  t.teardown(async () => {
    sdk.close();
    for (const g of [g1, g2]) if (g && g.child.exitCode === null) g.child.kill('SIGKILL');
    await echo.close();
  });

  const socks: { sock: GatewaySocket; plane: TransportName; end: Promise<Ending>; echoed: number }[] = [];
  for (let i = 0; i < SOCKETS; i++) {
    const plane = planes[i % planes.length]!;
    const sock = await sdk.connect(echo.uri, { transports: [plane] });
    t.is(sock.transport, plane);
    const rec = { sock, plane, end: ending(sock), echoed: 0 };
    sock.on('data', (c: Buffer) => (rec.echoed += c.length));
    socks.push(rec);
  }
  // Every socket streams until it fails; the echo keeps bytes flowing both ways.
  const block = randomBytes(64 * 1024);
  const pumps = socks.map(async ({ sock }) => {
    for (let n = 0; n < 100_000 && !sock.destroyed; n++) {
      if (!sock.write(block)) await drainOrClose(sock);
    }
  });
  // Mid-transfer: every socket has had bytes come back.
  await within(
    (async () => {
      while (socks.some((s) => s.echoed === 0)) await new Promise((r) => setTimeout(r, 50));
    })(),
    30_000,
    'bytes echoed on every socket',
  );
  g1.child.kill('SIGKILL');
  const endings = await within(Promise.all(socks.map((s) => s.end)), END_WITHIN_MS, 'every socket to end after the kill');
  await within(Promise.all(pumps), 5_000, 'the writers to stop');
  const clean = socks.filter((_, i) => !endings[i]!.error).map((s) => `${s.sock.socketId} (${s.plane})`);
  t.deepEqual(clean, [], 'sockets that ended without an error, as if complete');
  const codes = new Map<string, number>();
  endings.forEach((e, i) => {
    const key = `${socks[i]!.plane}: ${e.error?.code ?? e.error?.name}`;
    codes.set(key, (codes.get(key) ?? 0) + 1);
  });
  t.log('how the sockets ended:', Object.fromEntries(codes));
  for (const e of endings) t.truthy(e.error?.code, `every error says what happened with a code: ${e.error?.message}`);

  // The gateway comes back on the same control address: new sockets through the same SDK object work.
  g2 = await startChildGateway('', ['--set', `listen.control=127.0.0.1:${port}`]);
  t.is(g2.target, `127.0.0.1:${port}`);
  for (const plane of planes) {
    const sock = await within(sdk.connect(echo.uri, { transports: [plane] }), 30_000, `a new ${plane} socket after the restart`);
    const got = hashUntilEnd(sock);
    const sent = await sendRandom(sock, 1 << 20);
    const r = await within(got, 20_000, `${plane} echo after the restart`);
    t.is(r.sha256, sent, `${plane}: bytes intact after the restart`);
  }
});
