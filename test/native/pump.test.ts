/**
 * Region + native pump against real kernel sockets: 64 MiB each way with
 * SHA-256 checked, half-close in both directions, prefix delivery, the
 * phase-2 path (dup an fd from a Node net.Socket), and adaptive ring growth.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { Pump, dupFd, socketpair, type PumpEvent } from '../../native/index.js';
import { ClientDriver, regionPair, sha256, until } from './helpers.js';

const MiB = 1 << 20;

/** Cleanup that logs instead of masking the test's own failure. */
async function quietly(t: import('ava').ExecutionContext, fn: () => Promise<void> | void): Promise<void> {
  try {
    await fn();
  } catch (err) {
    t.log('cleanup failed:', String(err));
  }
}

/** Collects what the destination socket receives and sends it `payload`, then ends. */
function destination(sock: net.Socket, payload: Buffer, opts: { endAfterWrite: boolean }) {
  const chunks: Buffer[] = [];
  const st = { ended: false, bytes: 0, digest: '' };
  sock.on('data', (d: Buffer) => {
    chunks.push(d);
    st.bytes += d.length;
  });
  sock.on('end', () => {
    st.ended = true;
    st.digest = sha256(...chunks);
  });
  sock.write(payload, () => {
    if (opts.endAfterWrite) sock.end();
  });
  return st;
}

async function run64(t: import('ava').ExecutionContext, kind: 'socketpair' | 'tcp') {
  const p = regionPair({ slots: 4, maxRingSize: 1 << 20 });
  const events: PumpEvent[] = [];
  let driver: ClientDriver | undefined;
  const gwPump = new Pump((evs) => events.push(...evs));
  const clPump = new Pump((evs) => {
    for (const e of evs) if (e.type === 'hints' && e.slots.includes(2)) driver?.kick();
  });
  let dest: net.Socket;
  let hostFd: number;
  let server: net.Server | undefined;
  if (kind === 'socketpair') {
    const [a, b] = socketpair();
    hostFd = a;
    dest = new net.Socket({ fd: b, readable: true, writable: true });
  } else {
    // The phase-2 path: the gateway dups the fd of a connected Node socket.
    const accepted = new Promise<net.Socket>((res) => {
      server = net.createServer((s) => res(s)).listen(0, '127.0.0.1');
    });
    await new Promise<void>((res) => server!.once('listening', () => res()));
    const port = (server!.address() as net.AddressInfo).port;
    const host = net.connect(port, '127.0.0.1');
    await new Promise<void>((res) => host.once('connect', () => res()));
    host.pause();
    const handle = (host as unknown as { _handle: { fd: number; readStop(): void } })._handle;
    handle.readStop();
    hostFd = dupFd(handle.fd);
    host.destroy();
    dest = await accepted;
  }
  try {
    p.gw.openSlot(2, 16384);
    const up = randomBytes(64 * MiB);
    const down = randomBytes(64 * MiB);
    const prefix = [Buffer.from('prefix-1|'), Buffer.from('prefix-2|')];
    const st = destination(dest, down, { endAfterWrite: true });
    driver = new ClientDriver(p.cl, 2, up);
    clPump.watch(p.cl);
    const link = gwPump.link(p.gw, 2, hostFd, prefix);
    driver.kick();
    const end = await Promise.race([
      link.ended,
      new Promise<never>((_, rej) => setTimeout(() => rej(new Error('pump did not finish in 60 s')), 60_000)),
    ]);
    await until(() => driver!.done && st.ended, 10_000, 'both directions to finish');
    t.is(driver.error, undefined);
    t.is(end.reason, 'ok');
    t.is(end.totalToFd, up.length);
    t.is(end.totalToRing, down.length + 18);
    t.is(st.bytes, up.length);
    t.is(st.digest, sha256(up), 'client -> fd bytes intact');
    t.is(driver.received, down.length + 18);
    t.is(driver.digest, sha256(Buffer.concat(prefix), down), 'prefix then fd -> client bytes intact');
    const kinds = new Set(events.map((e) => e.type));
    t.true(kinds.has('fdEof') && kinds.has('ringEof') && kinds.has('progress'));
    const progress = events.filter((e) => e.type === 'progress').length;
    t.true(progress < 20000, `events are batched (${progress} progress events for 128 MiB)`);
    t.is(gwPump.activeLinks, 0);
  } finally {
    clPump.unwatch(p.cl);
    await until(() => {
      try {
        p.close();
        return true;
      } catch {
        return false;
      }
    }, 5000, 'region release');
    gwPump.close();
    clPump.close();
    dest.destroy();
    server?.close();
  }
}

test.serial('64 MiB each way over a socketpair, SHA-256 checked, with prefix', (t) => run64(t, 'socketpair'));
test.serial('64 MiB each way over TCP loopback via a dup()ed Node socket fd', (t) => run64(t, 'tcp'));

test.serial('half-close: client EOF reaches the fd while the fd keeps sending, and the reverse', async (t) => {
  const p = regionPair({ slots: 1, maxRingSize: 1 << 16 });
  const gwPump = new Pump();
  const clPump = new Pump();
  try {
    p.gw.openSlot(0, 4096);
    // 1) client -> fd half-close first.
    let [a, b] = socketpair();
    let dest = new net.Socket({ fd: b, readable: true, writable: true, allowHalfOpen: true });
    let gotEnd = false;
    const received: Buffer[] = [];
    dest.on('data', (d: Buffer) => received.push(d));
    dest.on('end', () => (gotEnd = true));
    let link = gwPump.link(p.gw, 0, a);
    p.cl.write(0, Buffer.from('last words'));
    p.cl.shutdown(0);
    await until(() => gotEnd, 5000, 'the destination to see EOF');
    t.is(Buffer.concat(received).toString(), 'last words');
    dest.write('still talking');
    const buf = Buffer.alloc(64);
    let got = '';
    await until(() => {
      const n = p.cl.read(0, buf);
      if (n) got += buf.subarray(0, n).toString();
      return got === 'still talking';
    }, 5000, 'data after the half-close');
    dest.end();
    await until(() => p.cl.read(0, buf) === null, 5000, 'EOF at the client');
    const end = await link.ended;
    t.is(end.reason, 'ok');
    dest.destroy();
    // 2) fd -> client half-close first, on a fresh slot.
    p.gw.closeSlot(0);
    p.gw.openSlot(0, 4096);
    [a, b] = socketpair();
    dest = new net.Socket({ fd: b, readable: true, writable: true, allowHalfOpen: true });
    const received2: Buffer[] = [];
    let gotEnd2 = false;
    dest.on('data', (d: Buffer) => received2.push(d));
    dest.on('end', () => (gotEnd2 = true));
    link = gwPump.link(p.gw, 0, a);
    dest.end('bye');
    let got2 = '';
    let eof = false;
    await until(() => {
      const n = p.cl.read(0, buf);
      if (n === null) eof = true;
      else if (n) got2 += buf.subarray(0, n).toString();
      return eof;
    }, 5000, 'EOF at the client');
    t.is(got2, 'bye');
    p.cl.write(0, Buffer.from('reply after your EOF'));
    p.cl.shutdown(0);
    await until(() => gotEnd2, 5000, 'EOF at the destination');
    t.is(Buffer.concat(received2).toString(), 'reply after your EOF');
    t.is((await link.ended).reason, 'ok');
    dest.destroy();
  } finally {
    await quietly(t, async () => {
      await until(() => gwPump.activeLinks === 0, 5000, 'links to end');
      p.close();
      gwPump.close();
      clPump.close();
    });
  }
});

test.serial('an fd error ends the link with the errno; abort closes the fd', async (t) => {
  const p = regionPair({ slots: 2, maxRingSize: 1 << 16 });
  const gwPump = new Pump();
  try {
    p.gw.openSlot(0, 4096);
    p.gw.openSlot(1, 4096);
    const [a, b] = socketpair();
    const link = gwPump.link(p.gw, 0, a);
    // Peer closes with unread data -> the next write fails (EPIPE/ECONNRESET).
    const dest = new net.Socket({ fd: b, readable: true, writable: true });
    dest.destroy();
    p.cl.write(0, Buffer.alloc(4096, 1));
    const end = await link.ended;
    t.is(end.reason, 'error');
    t.true(end.code === 'EPIPE' || end.code === 'ECONNRESET', `code ${end.code}`);
    const [c, d] = socketpair();
    const l2 = gwPump.link(p.gw, 1, c);
    const e2 = await l2.close();
    t.is(e2.reason, 'aborted');
    t.is(await l2.close(), e2, 'close is idempotent');
    const peer = new net.Socket({ fd: d, readable: true, writable: true });
    await new Promise<void>((res) => peer.once('end', () => res()).resume());
    t.pass('the aborted link closed its fd');
    peer.destroy();
  } finally {
    await until(() => gwPump.activeLinks === 0, 5000, 'links to end');
    p.close();
    gwPump.close();
  }
});

test.serial('ring grows under sustained throughput when TS grants it (stall counters drive it)', async (t) => {
  const p = regionPair({ slots: 1, maxRingSize: 1 << 20 });
  let stalls = 0;
  let resized: PumpEvent | undefined;
  const gwPump = new Pump((evs) => {
    for (const e of evs) {
      if (e.type === 'progress') stalls += e.stalls;
      if (e.type === 'resized') resized = e;
    }
  });
  try {
    p.gw.openSlot(0, 4096);
    const [a, b] = socketpair();
    const dest = new net.Socket({ fd: b, readable: true, writable: true });
    const link = gwPump.link(p.gw, 0, a);
    const payload = randomBytes(8 * MiB);
    dest.write(payload);
    const buf = Buffer.alloc(MiB);
    let got = 0;
    await until(() => stalls > 0, 5000, 'ring-full stalls');
    link.resize(1, 1 << 18); // the TS policy decides; the pump applies it when the ring is empty
    await until(() => resized !== undefined, 5000, 'the resize ack');
    let maxRead = 0;
    await until(() => {
      const n = p.cl.read(0, buf) ?? 0;
      got += n;
      maxRead = Math.max(maxRead, n);
      return got === payload.length;
    }, 20000, 'all bytes');
    t.true(maxRead > 4096, `reads larger than the initial ring (${maxRead})`);
    await link.close();
    dest.destroy();
  } finally {
    p.close();
    gwPump.close();
  }
});
