/**
 * The client-role ring link: the mirror of the gateway's, both on native
 * pumps over one region pair (gateway fd A <-> slot rings <-> client fd B),
 * against real sockets: 32 MiB each way with SHA-256, half-close passing
 * through in each direction, a graceful shutdownRead that drains, counters
 * read on demand (no progress events when muted), a watched session whose
 * unlinked slots still get their hints, and reset on close.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { Pump, socketpair, type PumpEvent } from '../../native/index.js';
import { regionPair, sha256, until } from './helpers.js';

const MiB = 1 << 20;

function sock(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true } as net.SocketConstructorOpts);
}

function collect(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  return once(s, 'end').then(() => Buffer.concat(chunks));
}

test.serial('client and gateway ring links: 32 MiB each way, SHA-256, half-close both ways, muted counters', async (t) => {
  const p = regionPair({ slots: 4, maxRingSize: 1 << 20 });
  const clEvents: PumpEvent[] = [];
  const gwPump = new Pump();
  const clPump = new Pump((evs) => clEvents.push(...evs));
  try {
    p.gw.openSlot(1, 1 << 16);
    const [ga, gb] = socketpair();
    const [ca, cb] = socketpair();
    clPump.watch(p.cl);
    const gl = gwPump.link(p.gw, 1, ga);
    const cl = clPump.link(p.cl, 1, ca);
    cl.raw.mute();
    const host = sock(gb);
    const app = sock(cb);
    const up = randomBytes(32 * MiB);
    const down = randomBytes(32 * MiB);
    const atHost = collect(host);
    const atApp = collect(app);
    app.end(up);
    host.end(down);
    const [h, a] = await Promise.all([atHost, atApp]);
    t.is(sha256(h), sha256(up), 'app -> host exact');
    t.is(sha256(a), sha256(down), 'host -> app exact');
    const [ge, ce] = await Promise.all([gl.ended, cl.ended]);
    t.is(ge.reason, 'ok');
    t.is(ce.reason, 'ok');
    t.is(ce.totalToRing, up.length);
    t.is(ce.totalToFd, down.length);
    t.deepEqual(cl.raw.totals(), [down.length, up.length]);
    t.false(clEvents.some((e) => e.type === 'progress'), 'a muted link sends no progress events');
    t.false(clEvents.some((e) => e.type === 'hints' && e.slots.includes(1)), 'hints of a linked slot stay on the I/O thread');
    host.destroy();
    app.destroy();
  } finally {
    await until(() => gwPump.activeLinks === 0 && clPump.activeLinks === 0, 5000, 'links end');
    clPump.unwatch(p.cl);
    await new Promise((r) => setTimeout(r, 50));
    gwPump.close();
    clPump.close();
    p.close();
  }
});

test.serial('client link: shutdownRead drains (the host gets FIN after the bytes, the app still gets the reply); close({reset}) resets', async (t) => {
  const p = regionPair({ slots: 4, maxRingSize: 1 << 20 });
  const gwPump = new Pump();
  const clPump = new Pump();
  try {
    p.gw.openSlot(1, 1 << 16);
    p.gw.openSlot(2, 1 << 16);
    const [ga, gb] = socketpair();
    const [ca, cb] = socketpair();
    const gl = gwPump.link(p.gw, 1, ga);
    const cl = clPump.link(p.cl, 1, ca);
    const host = sock(gb);
    const app = sock(cb);
    const atHost = collect(host);
    app.write('request');
    await until(() => cl.raw.totals()[1] === 7 || host.readableLength > 0, 5000, 'bytes reach the ring');
    cl.shutdownRead();
    const got = await atHost;
    t.is(got.toString(), 'request', 'the host gets FIN after the bytes already taken');
    const atApp = collect(app);
    host.end('reply');
    t.is((await atApp).toString(), 'reply', 'the other direction drains to its end');
    t.is((await cl.ended).reason, 'ok');
    t.is((await gl.ended).reason, 'ok');
    host.destroy();
    app.destroy();
    // Reset: the app's peer sees ECONNRESET (a TCP pair: RST is a TCP thing).
    const srv = net.createServer({ allowHalfOpen: true }).listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const c = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    const [s] = (await once(srv, 'connection')) as [net.Socket];
    const fd = (s as unknown as { _handle: { fd: number } })._handle.fd;
    const { dupFd } = await import('../../native/index.js');
    const dfd = dupFd(fd);
    s.destroy();
    const [g2a, g2b] = socketpair();
    const gl2 = gwPump.link(p.gw, 2, g2a);
    const cl2 = clPump.link(p.cl, 2, dfd);
    const err = new Promise<string | undefined>((res) => {
      c.once('error', (e: NodeJS.ErrnoException) => res(e.code));
      c.once('end', () => res('FIN'));
    });
    c.resume();
    await cl2.close({ reset: true });
    t.is(await err, 'ECONNRESET');
    await gl2.close();
    sock(g2b).destroy();
    c.destroy();
    srv.close();
  } finally {
    await until(() => gwPump.activeLinks === 0 && clPump.activeLinks === 0, 5000, 'links end');
    gwPump.close();
    clPump.close();
    p.close();
  }
});
