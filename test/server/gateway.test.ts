/**
 * The gateway core end to end, on real loopback sockets: echo and bulk
 * transfers through each data plane (SHA-256 on both ends), half-close both
 * ways, backpressure bounded by the watermarks, UDP with datagram boundaries,
 * and inbound connections through Listen/Accept.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { status } from '@grpc/grpc-js';
import { DatagramTooLargeError, SockgateError } from '../../proto/errors.js';
import { SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import type { GatewaySocket } from '../../clients/sdk/socket.js';
import { SDK_TRANSPORTS } from '../../clients/sdk/gateway.js';
import { echoServer, hashUntilEnd, readAll, sendRandom, startGateway, tcpServer, within } from '../helpers/harness.js';

const PLANES = ['tcp', 'grpc'] as const;

for (const plane of PLANES) {
  test(`echo through the ${plane} data plane`, async (t) => {
    const gw = await startGateway();
    const echo = await echoServer();
    t.teardown(async () => {
      await echo.close();
      await gw.stop();
    });
    const sock = await gw.sdk.connect(echo.uri, { transports: [plane] });
    t.is(sock.transport, plane);
    t.deepEqual(sock.fallbacks, []);
    t.is(sock.remotePort, echo.port);
    const got = readAll(sock);
    sock.end('hello through sockgate');
    t.is((await within(got, 10_000, 'echo')).toString(), 'hello through sockgate');
    const info = await gw.sdk.getInfo(sock.socketId).catch((err: SockgateError) => err);
    // Closed sockets leave the table; an open one reports its counters.
    if (!(info instanceof SockgateError)) t.is(info.bytesOut, 'hello through sockgate'.length);
  });

  test(`256 MiB echo through the ${plane} data plane keeps every byte (SHA-256 both ends)`, async (t) => {
    t.timeout(180_000);
    const gw = await startGateway();
    const echo = await echoServer();
    t.teardown(async () => {
      await echo.close();
      await gw.stop();
    });
    const sock = await gw.sdk.connect(echo.uri, { transports: [plane] });
    const total = 256 << 20;
    const received = hashUntilEnd(sock);
    const sent = await sendRandom(sock, total, 64 * 1024);
    const got = await within(received, 170_000, '256 MiB echo');
    t.is(got.bytes, total);
    t.is(got.sha256, sent);
  });

  test(`half-close from the guest through ${plane}: destination sees EOF and can still answer`, async (t) => {
    const gw = await startGateway();
    const dest = await tcpServer((c) => {
      const chunks: Buffer[] = [];
      c.on('data', (d: Buffer) => chunks.push(d));
      // Answer only after the guest's FIN: proves the reverse direction stays open.
      c.on('end', () => {
        const req = Buffer.concat(chunks);
        c.end(Buffer.concat([Buffer.from('got '), Buffer.from(createHash('sha256').update(req).digest('hex'))]));
      });
    });
    t.teardown(async () => {
      await dest.close();
      await gw.stop();
    });
    const sock = await gw.sdk.connect(dest.uri, { transports: [plane] });
    const payload = randomBytes(300_000);
    const reply = readAll(sock);
    sock.end(payload);
    t.is((await within(reply, 10_000, 'reply after half-close')).toString(), `got ${createHash('sha256').update(payload).digest('hex')}`);
  });

  test(`half-close from the destination through ${plane}: guest sees end and can still send`, async (t) => {
    const gw = await startGateway();
    let received: Promise<Buffer> | undefined;
    const dest = await tcpServer((c) => {
      received = readAll(c);
      c.end('bye'); // FIN first, then keep reading
    });
    t.teardown(async () => {
      await dest.close();
      await gw.stop();
    });
    const sock = await gw.sdk.connect(dest.uri, { transports: [plane] });
    const fromDest = await within(readAll(sock), 10_000, 'destination FIN');
    t.is(fromDest.toString(), 'bye');
    const info = await gw.sdk.getInfo(sock.socketId);
    t.is(info.state, SocketState.SOCKET_STATE_HALF_CLOSED);
    const payload = randomBytes(200_000);
    sock.end(payload);
    const got = await within(
      (async () => {
        while (!received) await new Promise((r) => setTimeout(r, 10));
        return received;
      })(),
      10_000,
      'destination read',
    );
    t.true(got.equals(payload));
  });

  test(`backpressure through ${plane}: a destination that stops reading keeps the gateway within its watermarks`, async (t) => {
    const hwm = 256 * 1024;
    const gw = await startGateway({ socket: { high_watermark_bytes: hwm } });
    const held: Socket[] = [];
    const dest = await tcpServer((c) => {
      c.pause(); // never reads
      held.push(c);
    });
    t.teardown(async () => {
      await dest.close();
      await gw.stop();
    });
    const sock = await gw.sdk.connect(dest.uri, { transports: [plane] });
    const chunk = Buffer.alloc(64 * 1024, 7);
    let written = 0;
    let maxBuffered = 0;
    const deadline = Date.now() + 4_000;
    // Write until the SDK stream refuses for 500 ms straight, bounded by 64 MiB and 4 s.
    while (written < 64 << 20 && Date.now() < deadline) {
      const accepted = sock.write(chunk);
      written += chunk.length; // queued either way
      if (!accepted) {
        const drained = await Promise.race([once(sock, 'drain').then(() => true), new Promise((r) => setTimeout(() => r(false), 500))]);
        if (!drained) break;
      }
      const info = await gw.sdk.getInfo(sock.socketId);
      maxBuffered = Math.max(maxBuffered, info.bufferedBytes);
    }
    const info = await gw.sdk.getInfo(sock.socketId);
    maxBuffered = Math.max(maxBuffered, info.bufferedBytes);
    t.log(`wrote ${written} bytes before the writer stalled; gateway buffered at most ${maxBuffered} bytes (watermark ${hwm})`);
    t.true(written < 64 << 20, 'the writer must stall');
    // Two streams per direction (guest channel + host socket), each bounded by the watermark plus one chunk in flight.
    t.true(maxBuffered <= 2 * (hwm + 2 * chunk.length), `gateway buffered ${maxBuffered} bytes`);
    // Resume reading: everything written arrives, in order, unharmed.
    const expect = createHash('sha256');
    for (let n = 0; n < written; n += chunk.length) expect.update(chunk);
    const c = held[0]!;
    const got = hashUntilEnd(c);
    c.resume();
    sock.end();
    const r = await within(got, 20_000, 'drain after resume');
    t.is(r.bytes, written);
    t.is(r.sha256, expect.digest('hex'));
  });
}

test('inbound: Listen on a host port, a host client connects, the guest gets the connection', async (t) => {
  const gw = await startGateway();
  t.teardown(() => gw.stop());
  const server = await gw.sdk.listen('tcp://127.0.0.1:0');
  const { port } = server.address();
  t.true(port > 0);
  const accepted = once(server, 'connection') as Promise<[GatewaySocket]>;
  const client = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await once(client, 'connect');
  const [guestSide] = await within(accepted, 10_000, 'accept');
  // The default offers: shm first for a gateway on this host (when the addon loaded), else tcp.
  t.is(guestSide.transport, SDK_TRANSPORTS[0], JSON.stringify(guestSide.fallbacks));
  t.is(guestSide.remotePort, client.localPort);
  // The guest echoes what the host client sends.
  guestSide.pipe(guestSide);
  const payload = randomBytes(1 << 20);
  const back = readAll(client);
  client.end(payload);
  t.true((await within(back, 10_000, 'inbound echo')).equals(payload));
  await server.close();
  // The listener is gone from the gateway.
  await within(
    (async () => {
      while (gw.gateway.table.list().some((s) => s.kind === 'listener')) await new Promise((r) => setTimeout(r, 20));
    })(),
    5_000,
    'listener closed',
  );
  t.pass();
});

async function udpEcho(): Promise<{ port: number; close(): void }> {
  const s = createSocket('udp4');
  s.on('message', (msg, rinfo) => s.send(msg, rinfo.port, rinfo.address));
  s.bind(0, '127.0.0.1');
  await once(s, 'listening');
  return { port: s.address().port, close: () => s.close() };
}

for (const plane of PLANES) {
  test(`UDP round trip through ${plane} keeps datagram boundaries`, async (t) => {
    const gw = await startGateway();
    const echo = await udpEcho();
    t.teardown(async () => {
      echo.close();
      await gw.stop();
    });
    const sock = await gw.sdk.udp(`udp://127.0.0.1:${echo.port}`, { mode: 'connect', transports: [plane] });
    t.is(sock.transport, plane);
    const sizes = [1, 17, 512, 1400, 9000, 65507, 0, 3];
    const got: Buffer[] = [];
    const all = new Promise<void>((resolve) =>
      sock.on('message', (m: Buffer) => {
        got.push(m);
        if (got.length === sizes.length) resolve();
      }),
    );
    const sent = sizes.map((n) => randomBytes(n));
    // One at a time: UDP may reorder in general; loopback does not, but do not depend on it.
    for (const d of sent) await sock.send(d);
    await within(all, 10_000, 'udp echoes');
    t.deepEqual(
      got.map((b) => createHash('sha256').update(b).digest('hex')).sort(),
      sent.map((b) => createHash('sha256').update(b).digest('hex')).sort(),
    );
    t.deepEqual(got.map((b) => b.length).sort((a, b) => a - b), [...sizes].sort((a, b) => a - b));
    await sock.close();
  });
}

test('UDP bound socket: send to an address, receive with the source address', async (t) => {
  const gw = await startGateway();
  const echo = await udpEcho();
  t.teardown(async () => {
    echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.udp('udp://127.0.0.1:0');
  const msg = once(sock, 'message') as Promise<[Buffer, { uri: string; port: number }]>;
  await sock.send(Buffer.from('ping'), `udp://127.0.0.1:${echo.port}`);
  const [payload, from] = await within(msg, 10_000, 'udp reply');
  t.is(payload.toString(), 'ping');
  t.is(from.port, echo.port);
  t.is(from.uri, `udp://127.0.0.1:${echo.port}`);
  await sock.close();
});

test('UDP: an oversize datagram gives a clear error, from the SDK and from the gateway', async (t) => {
  const gw = await startGateway();
  const echo = await udpEcho();
  t.teardown(async () => {
    echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.udp(`udp://127.0.0.1:${echo.port}`, { mode: 'connect' });
  const err = await t.throwsAsync(sock.send(Buffer.alloc(70_000)), { instanceOf: DatagramTooLargeError });
  t.regex(err!.message, /70000 bytes exceeds the maximum of 65507/);
  // The gateway enforces it too (SendTo RPC straight to the service).
  const client = (gw.sdk as unknown as { client: { sendTo: (r: unknown, cb: (e: { code: number; details: string } | null) => void) => void } }).client;
  const rpcErr = await new Promise<{ code: number; details: string } | null>((resolve) =>
    client.sendTo({ socketId: sock.socketId, datagram: { uri: '', payload: Buffer.alloc(70_000) } }, resolve),
  );
  t.is(rpcErr?.code, status.INVALID_ARGUMENT);
  t.regex(rpcErr?.details ?? '', /exceeds the maximum of 65507 bytes/);
  await sock.close();
});

test('SetOption: no-delay, keep-alive and buffer sizes reach the host socket; bad values are INVALID_ARGUMENT', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(echo.uri);
  const control = (gw.sdk as unknown as { control: { setOption(id: string, o: object): Promise<void> } }).control;
  await control.setOption(sock.socketId, { noDelay: true });
  await control.setOption(sock.socketId, { keepAliveMs: 5000 });
  await control.setOption(sock.socketId, { sendBufferBytes: 96 * 1024 });
  await control.setOption(sock.socketId, { recvBufferBytes: 80 * 1024 });
  const native = await import('../../native/index.js');
  const gs = gw.gateway.table.list().find((s) => s.id === sock.socketId) as unknown as {
    host: { _handle: { fd: number } | null };
    nativeLink?: { getHostSockopt(name: 'SO_SNDBUF' | 'SO_RCVBUF' | 'TCP_NODELAY' | 'SO_KEEPALIVE'): number };
  };
  // The tcp plane's native relay owns the host descriptor (the JS socket gave its own up); else the JS socket has it.
  const opt = (name: 'SO_SNDBUF' | 'SO_RCVBUF') => (gs.nativeLink ? gs.nativeLink.getHostSockopt(name) : native.getsockopt(gs.host._handle!.fd, name));
  // Linux doubles the requested value for bookkeeping.
  t.is(opt('SO_SNDBUF'), 2 * 96 * 1024);
  t.is(opt('SO_RCVBUF'), 2 * 80 * 1024);
  if (gs.nativeLink) {
    t.is(gs.nativeLink.getHostSockopt('TCP_NODELAY'), 1);
    t.is(gs.nativeLink.getHostSockopt('SO_KEEPALIVE'), 1);
  }
  const err = await t.throwsAsync(control.setOption(sock.socketId, { sendBufferBytes: 12 }));
  t.is((err as SockgateError).grpcStatus, status.INVALID_ARGUMENT);
  t.regex(err!.message, /send_buffer_bytes must be 1024\.\.67108864, got 12/);
  const udp = await gw.sdk.udp('udp://127.0.0.1:0');
  const err2 = await t.throwsAsync(control.setOption(udp.socketId, { noDelay: true }));
  t.is((err2 as SockgateError).grpcStatus, status.FAILED_PRECONDITION);
  sock.destroy();
  await udp.close();
});

test('UDP: a datagram to a denied destination is dropped and counted, the socket lives on', async (t) => {
  const gw = await startGateway();
  const echo = await udpEcho();
  t.teardown(async () => {
    echo.close();
    await gw.stop();
  });
  const sock = await gw.sdk.udp('udp://127.0.0.1:0');
  // Denied by the default loopback-only policy before anything is sent.
  await sock.send(Buffer.from('nope'), 'udp://10.0.0.1:9');
  const msg = once(sock, 'message') as Promise<[Buffer]>;
  await sock.send(Buffer.from('still here'), `udp://127.0.0.1:${echo.port}`);
  const [payload] = await within(msg, 10_000, 'udp reply after a refused datagram');
  t.is(payload.toString(), 'still here');
  const gsock = gw.gateway.table.list().find((s) => s.id === sock.socketId) as unknown as { refused: number };
  t.is(gsock.refused, 1);
  await sock.close();
});
