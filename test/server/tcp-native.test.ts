/**
 * The tcp plane's native relay end to end: with the addon loaded, a stream
 * socket's data connection and host socket go to a splice link (the payload
 * never enters the gateway's JS), GetInfo's counters and buffered bytes come
 * from the link's events, half-close shows in the socket state, and bytes the
 * destination sent before the attach arrive first. With
 * `transports.tcp_native: false` the JS relay carries the same echo.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { echoServer, hashUntilEnd, readAll, sendRandom, startGateway, tcpServer, within } from '../helpers/harness.js';

/** What the tests peek at on the gateway's socket. */
interface GatewaySide {
  nativeLink?: { bufferedBytes?(): number };
  host: { destroyed: boolean };
}

function gatewaySide(gw: Awaited<ReturnType<typeof startGateway>>, id: string): GatewaySide {
  const s = gw.gateway.table.list().find((x) => x.id === id);
  if (!s) throw new Error(`socket ${id} is not in the table`);
  return s as unknown as GatewaySide;
}

async function eventually(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return cond();
}

test('tcp plane runs natively: a splice link owns the host socket, progress events drive GetInfo, 8 MiB echo intact', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp'] });
  t.is(sock.transport, 'tcp');
  const side = gatewaySide(gw, sock.socketId);
  t.truthy(side.nativeLink, 'the socket rides a native link');
  t.true(side.host.destroyed, 'the JS host socket gave its descriptor up');
  const total = 8 << 20;
  const back = hashUntilEnd(sock);
  const sent = await sendRandom(sock, total, 64 * 1024, false);
  // Counters arrive batched from the I/O thread: wait for them to cover the echo.
  t.true(
    await eventually(async () => {
      const info = await gw.sdk.getInfo(sock.socketId);
      return info.bytesOut === total && info.bytesIn === total;
    }, 10_000),
    'GetInfo counts every byte each way (no attach reply, no double count)',
  );
  const info = await gw.sdk.getInfo(sock.socketId);
  t.is(info.state, SocketState.SOCKET_STATE_OPEN);
  t.true(info.bufferedBytes >= 0 && info.bufferedBytes <= 2 * (1 << 20), `buffered ${info.bufferedBytes}`);
  sock.end();
  const got = await within(back, 20_000, 'echo');
  t.is(got.bytes, total);
  t.is(got.sha256, sent);
});

test('tcp plane natively: host FIN shows as HALF_CLOSED, the guest can still send, and early destination bytes come first', async (t) => {
  const gw = await startGateway();
  let received: Promise<Buffer> | undefined;
  const greeting = Buffer.from('220 hello before you attached\r\n');
  const dest = await tcpServer((c) => {
    received = readAll(c);
    c.end(greeting); // sent at once: it waits in the host socket until the guest attaches
  });
  t.teardown(async () => {
    await dest.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(dest.uri, { transports: ['tcp'] });
  t.truthy(gatewaySide(gw, sock.socketId).nativeLink);
  const fromDest = await within(readAll(sock), 10_000, 'destination greeting and FIN');
  t.true(fromDest.equals(greeting));
  t.true(
    await eventually(async () => (await gw.sdk.getInfo(sock.socketId)).state === SocketState.SOCKET_STATE_HALF_CLOSED, 5_000),
    'the host FIN half-closes the socket',
  );
  t.is((await gw.sdk.getInfo(sock.socketId)).bytesIn, greeting.length);
  const payload = randomBytes(1 << 20);
  sock.end(payload);
  const got = await within(
    (async () => {
      while (!received) await new Promise((r) => setTimeout(r, 10));
      return received;
    })(),
    10_000,
    'destination read',
  );
  t.is(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(payload).digest('hex'));
});

test('transports.tcp_native: false keeps the JS relay: echo intact, no native link', async (t) => {
  const gw = await startGateway({ transports: { tcp_native: false } });
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp'] });
  const side = gatewaySide(gw, sock.socketId);
  t.is(side.nativeLink, undefined, 'JS relays this socket');
  t.false(side.host.destroyed);
  const back = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 4 << 20);
  const got = await within(back, 20_000, 'echo');
  t.is(got.bytes, 4 << 20);
  t.is(got.sha256, sent);
});

test('tcp plane natively: closing from the guest with an error resets the destination, and the gateway socket goes away', async (t) => {
  const gw = await startGateway();
  let destErr: Promise<string> | undefined;
  const dest = await tcpServer((c) => {
    destErr = new Promise((res) => {
      c.on('error', (e: NodeJS.ErrnoException) => res(e.code ?? e.message));
      c.on('end', () => res('end'));
      c.resume();
    });
  });
  t.teardown(async () => {
    await dest.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(dest.uri, { transports: ['tcp'] });
  const id = sock.socketId;
  t.truthy(gatewaySide(gw, id).nativeLink);
  sock.on('error', () => {}); // our own abort comes back as the socket's error
  sock.write(randomBytes(64 * 1024));
  sock.destroy(new Error('guest aborts'));
  const how = await within(
    (async () => {
      while (!destErr) await new Promise((r) => setTimeout(r, 10));
      return destErr;
    })(),
    10_000,
    'the destination to see the abort',
  );
  t.is(how, 'ECONNRESET', 'an abort reaches the destination as a reset');
  t.true(await eventually(() => !gw.gateway.table.list().some((s) => s.id === id), 5_000), 'the socket left the table');
});
