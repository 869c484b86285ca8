/**
 * The proxy's SOCKS5 server on real sockets: the real curl through it
 * (--socks5-hostname, --socks5, IPv6, username/password), reply codes mapped
 * from gateway errors (denied by policy 0x02, refused 0x05, DNS 0x04, BIND
 * 0x07), and UDP ASSOCIATE against a real UDP echo server with hand-built
 * SOCKS UDP packets.
 */
import test from 'ava';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { startGateway, within } from '../../helpers/harness.js';
import { domainAddress, httpServer, ipv4Address, randomBody, requireTool, run, sha256, socksOpen, socksRequest, startProxy } from './helpers.js';

const BODY_BYTES = 8 << 20;

test('curl --socks5-hostname and --socks5 fetch a large body through the proxy and the gateway (SHA-256)', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  const { body, sha256: want } = randomBody(BODY_BYTES);
  const http = await httpServer(body);
  const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0' });
  t.teardown(async () => {
    await proxy.destroy();
    await http.close();
    await gw.stop();
  });
  const socks = proxy.addresses.socks!;
  // The name "localhost" travels to the gateway (ATYP 3) and is resolved there.
  const byName = await run('curl', ['-sS', '--fail', '--max-time', '30', '--socks5-hostname', socks, `http://localhost:${http.port}/`]);
  t.is(byName.code, 0, byName.stderr);
  t.is(byName.stdout.length, BODY_BYTES);
  t.is(sha256(byName.stdout), want);
  // curl resolves the name itself and sends an IPv4 address (ATYP 1).
  const byIp = await run('curl', ['-sS', '--fail', '--max-time', '30', '--socks5', socks, `http://127.0.0.1:${http.port}/`]);
  t.is(byIp.code, 0, byIp.stderr);
  t.is(sha256(byIp.stdout), want);
  t.is(proxy.socks!.stats.connects, 2);
});

test('curl through SOCKS5 to an IPv6 destination (ATYP 4)', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  let http;
  try {
    http = await httpServer(Buffer.from('over IPv6\n'), '::1');
  } catch (err) {
    // No IPv6 loopback in this environment: nothing to test here.
    await gw.stop();
    t.log(`no IPv6 loopback: ${(err as Error).message}`);
    t.pass();
    return;
  }
  const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0' });
  t.teardown(async () => {
    await proxy.destroy();
    await http.close();
    await gw.stop();
  });
  const r = await run('curl', ['-sS', '--fail', '--max-time', '20', '--socks5', proxy.addresses.socks!, `http://[::1]:${http.port}/`]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.toString(), 'over IPv6\n');
});

test('username/password (RFC 1929): curl --proxy-user with the right password works, a wrong one fails', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  const { body, sha256: want } = randomBody(1 << 20);
  const http = await httpServer(body);
  const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0', socksUser: 'guest', socksPass: 's3cret pass' });
  t.teardown(async () => {
    await proxy.destroy();
    await http.close();
    await gw.stop();
  });
  const socks = proxy.addresses.socks!;
  const url = `http://localhost:${http.port}/`;
  const good = await run('curl', ['-sS', '--fail', '--max-time', '20', '--socks5-hostname', socks, '--proxy-user', 'guest:s3cret pass', url]);
  t.is(good.code, 0, good.stderr);
  t.is(sha256(good.stdout), want);
  const bad = await run('curl', ['-sS', '--max-time', '20', '--socks5-hostname', socks, '--proxy-user', 'guest:wrong', url]);
  t.not(bad.code, 0);
  t.is(bad.stdout.length, 0);
  t.regex(bad.stderr, /authentication|auth|SOCKS/i);
  // Without credentials, the server offers no acceptable method.
  const none = await run('curl', ['-sS', '--max-time', '20', '--socks5-hostname', socks, url]);
  t.not(none.code, 0);
  t.is(proxy.socks!.stats.authFailures, 1);
});

test('reply codes come from gateway errors: denied 0x02, refused 0x05, DNS 0x04, BIND 0x07', async (t) => {
  const gw = await startGateway();
  const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0' });
  // A port with nothing listening: bind one, note it, close it.
  const probe = createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const closedPort = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  t.teardown(async () => {
    await proxy.destroy();
    await gw.stop();
  });
  const port = Number(proxy.addresses.socks!.split(':').pop());
  const ask = async (cmd: number, address: Buffer) => {
    const r = await socksOpen(port);
    const reply = await within(socksRequest(r, cmd, address), 15_000, 'SOCKS reply');
    // After a failure reply the server closes the connection.
    if (reply.rep !== 0) t.true(await within(r.closed(), 5_000, 'close after a failure reply'));
    r.sock.destroy();
    return reply.rep;
  };
  // The default policy allows loopback only: 10.255.255.1 is denied by the gateway (PERMISSION_DENIED).
  t.is(await ask(1, ipv4Address('10.255.255.1', 80)), 0x02, 'policy denial: connection not allowed by ruleset');
  t.is(await ask(1, ipv4Address('127.0.0.1', closedPort)), 0x05, 'connection refused');
  t.is(await ask(1, domainAddress('no-such-host.invalid', 80)), 0x04, 'name not resolved: host unreachable');
  t.is(await ask(2, ipv4Address('127.0.0.1', 80)), 0x07, 'BIND: command not supported');
  t.is(await ask(1, Buffer.from([0x09, 1, 2, 3, 4, 0, 80])), 0x08, 'unknown ATYP: address type not supported');
  t.deepEqual(proxy.socks!.stats.replies, { 2: 1, 5: 1, 4: 1, 7: 1, 8: 1 });
});

/** A UDP echo server on 127.0.0.1. */
async function udpEcho(): Promise<{ sock: UdpSocket; port: number }> {
  const sock = createSocket('udp4');
  sock.on('message', (msg, from) => sock.send(msg, from.port, from.address));
  sock.bind(0, '127.0.0.1');
  await once(sock, 'listening');
  return { sock, port: sock.address().port };
}

/** RSV RSV FRAG + address bytes + data. */
function udpPacket(frag: number, address: Buffer, data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([0, 0, frag]), address, data]);
}

test('UDP ASSOCIATE relays datagrams through a gateway UDP socket, boundaries kept, fragments dropped', async (t) => {
  const gw = await startGateway();
  const echo = await udpEcho();
  const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0', socksUdpBind: 'udp://127.0.0.1:0' });
  const client = createSocket('udp4');
  client.bind(0, '127.0.0.1');
  await once(client, 'listening');
  t.teardown(async () => {
    client.close();
    echo.sock.close();
    await proxy.destroy();
    await gw.stop();
  });
  const port = Number(proxy.addresses.socks!.split(':').pop());
  const ctl = await socksOpen(port);
  const reply = await within(socksRequest(ctl, 3, ipv4Address('0.0.0.0', 0)), 10_000, 'UDP ASSOCIATE reply');
  t.is(reply.rep, 0);
  t.is(reply.atyp, 1);
  const relayHost = [...reply.addr].join('.');
  t.is(relayHost, '127.0.0.1');
  const received: Buffer[] = [];
  client.on('message', (m) => received.push(m));
  const waitFor = async (n: number) => {
    const deadline = Date.now() + 10_000;
    while (received.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  };
  // A fragment (FRAG=1) first: the relay must drop it.
  client.send(udpPacket(1, ipv4Address('127.0.0.1', echo.port), Buffer.from('fragment')), reply.port, relayHost);
  const payloads = [Buffer.from('x'), Buffer.alloc(1400, 7), Buffer.alloc(9000, 9), Buffer.from('by name')];
  for (const [i, p] of payloads.entries()) {
    // The last one names the destination (ATYP 3): the gateway resolves it.
    const addr = i === payloads.length - 1 ? domainAddress('localhost', echo.port) : ipv4Address('127.0.0.1', echo.port);
    client.send(udpPacket(0, addr, p), reply.port, relayHost);
    await new Promise((r) => setTimeout(r, 10));
  }
  await waitFor(payloads.length);
  t.is(received.length, payloads.length, 'one reply datagram per datagram sent, none for the fragment');
  const got = received.map((m) => {
    t.deepEqual([...m.subarray(0, 4)], [0, 0, 0, 1], 'RSV, FRAG 0, ATYP IPv4');
    t.is([...m.subarray(4, 8)].join('.'), '127.0.0.1');
    t.is(m.readUInt16BE(8), echo.port, 'source is the echo server');
    return m.subarray(10).toString('hex');
  });
  t.deepEqual(got.sort(), payloads.map((p) => p.toString('hex')).sort(), 'every payload back whole: boundaries preserved');
  t.true(proxy.socks!.stats.udpDropped >= 1);
  // Closing the TCP control connection ends the association.
  ctl.sock.destroy();
  await new Promise((r) => setTimeout(r, 200));
  received.length = 0;
  client.send(udpPacket(0, ipv4Address('127.0.0.1', echo.port), Buffer.from('after close')), reply.port, relayHost);
  await new Promise((r) => setTimeout(r, 300));
  t.is(received.length, 0, 'no relay after the control connection closed');
});
