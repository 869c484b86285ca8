/**
 * Splice links (native/src/splice.h): two real TCP loopback connections
 * relayed fd <-> fd on the pump's I/O thread. 64 MiB each way with SHA-256
 * (splice and the copy fallback), prefixes, half-close both ways, RST
 * propagation both ways, a reader that stops (buffered bytes stay within the
 * pipe sizes), shutdownHost, host socket options, abort, use after close.
 *
 * Topology of every test: `client` (a Node socket: the guest) <-> fd C
 * (gateway side of the data connection) ==link== fd H (the host socket) <->
 * `dest` (a Node socket: the destination). C and H are dup()s whose Node
 * sockets were destroyed, as the gateway does.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import net from 'node:net';
import { Pump, SpliceLink, binding, dupFd, closeFd, socketpair, type PumpEvent, type SpliceEnd } from '../../native/index.js';
import { sha256, sleep, until } from './helpers.js';

const MiB = 1 << 20;

/** A connected TCP loopback pair: a Node socket and a bare fd (a dup) for its other end. */
async function tcpPair(): Promise<{ peer: net.Socket; fd: number }> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const peer = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  await once(peer, 'connect');
  const [other] = await accepted;
  server.close();
  other.pause();
  const handle = (other as unknown as { _handle: { fd: number; readStop(): void } })._handle;
  handle.readStop();
  const fd = dupFd(handle.fd);
  other.destroy(); // closes Node's copy: no FIN, the dup lives on
  peer.on('error', () => {});
  return { peer, fd };
}

interface Rig {
  client: net.Socket;
  dest: net.Socket;
  link: SpliceLink;
  events: PumpEvent[];
  progress: { toHost: number; toClient: number; calls: number };
  eofs: { host: number; client: number };
}

/** One pump per test file; each test closes its links. */
const pump = new Pump(() => {}, { unrefWhenIdle: true });
test.after.always(async () => {
  await until(() => pump.activeLinks === 0, 10_000, 'links to end').catch(() => {});
  pump.close();
});

async function rig(opts: { toHostPrefix?: Buffer[]; toClientPrefix?: Buffer[]; pipeBytes?: number; copy?: boolean } = {}): Promise<Rig> {
  const c = await tcpPair();
  const h = await tcpPair();
  const r: Omit<Rig, 'link'> = { client: c.peer, dest: h.peer, events: [], progress: { toHost: 0, toClient: 0, calls: 0 }, eofs: { host: 0, client: 0 } };
  const link = pump.splice(c.fd, h.fd, {
    ...opts,
    onProgress: (toHost, toClient) => {
      r.progress.toHost += toHost;
      r.progress.toClient += toClient;
      r.progress.calls++;
    },
    onHostEof: () => r.eofs.host++,
    onClientEof: () => r.eofs.client++,
  });
  return { ...r, link };
}

/** Everything a socket receives until its end (or error): bytes, digest, how it ended. */
function collect(s: net.Socket): Promise<{ bytes: number; sha256: string; end: 'end' | string }> {
  const h = createHash('sha256');
  let bytes = 0;
  return new Promise((resolve) => {
    s.on('data', (d: Buffer) => {
      bytes += d.length;
      h.update(d);
    });
    s.once('end', () => resolve({ bytes, sha256: h.digest('hex'), end: 'end' }));
    s.once('error', (err: NodeJS.ErrnoException) => resolve({ bytes, sha256: h.digest('hex'), end: err.code ?? err.message }));
  });
}

/** Write `total` random bytes in 64 KiB chunks (honouring backpressure), then end; the digest covers `seed` (what the receiver gets first) and the payload. */
async function send(s: net.Socket, total: number, seed: Buffer): Promise<string> {
  const h = createHash('sha256').update(seed);
  for (let off = 0; off < total; off += 64 * 1024) {
    const chunk = randomBytes(Math.min(64 * 1024, total - off));
    h.update(chunk);
    if (!s.write(chunk)) await once(s, 'drain');
  }
  s.end();
  return h.digest('hex');
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]);
}

/**
 * The link's EOF events reach JS through the pump's thread-safe callback, which
 * may run after the peer socket already saw the EOF: poll for them (bounded).
 */
async function eofsReach(r: Rig, want: Partial<Rig['eofs']>, ms = 5_000): Promise<Rig['eofs']> {
  const until = Date.now() + ms;
  const done = () => Object.entries(want).every(([k, v]) => r.eofs[k as keyof Rig['eofs']] === v);
  while (!done() && Date.now() < until) await new Promise((res) => setTimeout(res, 10));
  return { ...r.eofs };
}

function teardown(t: ExecutionContext, r: Rig): void {
  t.teardown(async () => {
    await r.link.close().catch(() => {});
    r.client.destroy();
    r.dest.destroy();
  });
}

async function bulk(t: ExecutionContext, copy: boolean, size: number): Promise<void> {
  t.timeout(120_000);
  const toHostPrefix = [Buffer.from('c2h-prefix-1|'), Buffer.from('c2h-prefix-2|')];
  const toClientPrefix = [Buffer.from('h2c-prefix|'), randomBytes(300_000)];
  const hp = Buffer.concat(toHostPrefix);
  const cp = Buffer.concat(toClientPrefix);
  const r = await rig({ toHostPrefix, toClientPrefix, copy });
  teardown(t, r);
  const atDest = collect(r.dest);
  const atClient = collect(r.client);
  const [up, down] = await within(Promise.all([send(r.client, size, hp), send(r.dest, size, cp)]), 100_000, 'sending');
  const [d, c] = await within(Promise.all([atDest, atClient]), 100_000, 'receiving');
  t.is(d.end, 'end');
  t.is(c.end, 'end');
  t.is(d.sha256, up, 'client -> host: prefix then payload, intact');
  t.is(c.sha256, down, 'host -> client: prefix then payload, intact');
  const end = await within(r.link.ended, 10_000, 'the link to end');
  t.is(end.reason, 'ok');
  t.is(end.errno, 0);
  t.is(end.totalToHost, size + hp.length);
  t.is(end.totalToClient, size + cp.length);
  t.is(r.progress.toHost, end.totalToHost, 'progress events add up to the totals');
  t.is(r.progress.toClient, end.totalToClient);
  t.true(r.progress.calls < 20_000, `progress is batched (${r.progress.calls} calls for ${Math.round((2 * size) / MiB)} MiB)`);
  t.deepEqual(await eofsReach(r, { host: 1, client: 1 }), { host: 1, client: 1 });
  t.is(r.link.bufferedBytes(), 0);
}

test.serial('64 MiB each way over TCP loopback through a splice link, SHA-256 both ways, prefixes first', (t) => bulk(t, false, 64 * MiB));

test.serial('the copy fallback (read/write through one reused buffer) relays 16 MiB each way intact', (t) => bulk(t, true, 16 * MiB));

test.serial('splice mode with odd sizes: 3 MiB + 7 bytes each way', (t) => bulk(t, false, 3 * MiB + 7));

test.serial('half-close, client first: the host sees EOF after every byte and can still answer', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atDest = collect(r.dest);
  const payload = randomBytes(2 * MiB);
  r.client.end(payload);
  const d = await within(atDest, 10_000, 'EOF at the destination');
  t.is(d.end, 'end');
  t.is(d.sha256, sha256(payload));
  t.is((await eofsReach(r, { client: 1 })).client, 1);
  const atClient = collect(r.client);
  const answer = randomBytes(MiB);
  r.dest.end(answer);
  const c = await within(atClient, 10_000, 'the answer after the half-close');
  t.is(c.end, 'end');
  t.is(c.sha256, sha256(answer));
  t.is((await within(r.link.ended, 5_000, 'end')).reason, 'ok');
});

test.serial('half-close, host first: the client sees EOF and can still send', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atClient = collect(r.client);
  r.dest.end('bye');
  const c = await within(atClient, 10_000, 'EOF at the client');
  t.is(c.end, 'end');
  t.is(c.bytes, 3);
  t.is((await eofsReach(r, { host: 1 })).host, 1);
  const atDest = collect(r.dest);
  const payload = randomBytes(3 * MiB);
  r.client.end(payload);
  const d = await within(atDest, 10_000, 'the client bytes after the host FIN');
  t.is(d.end, 'end');
  t.is(d.sha256, sha256(payload));
  t.is((await within(r.link.ended, 5_000, 'end')).reason, 'ok');
});

test.serial('a reset from the client ends the link with an error and resets the destination', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atDest = collect(r.dest);
  r.client.write(randomBytes(64 * 1024));
  await until(() => r.progress.toHost > 0, 5_000, 'bytes to flow');
  r.client.resetAndDestroy();
  const end = await within(r.link.ended, 5_000, 'the link to end');
  t.is(end.reason, 'error');
  t.true(end.code === 'ECONNRESET' || end.code === 'EPIPE', `code ${end.code}`);
  const d = await within(atDest, 5_000, 'the destination to see the end');
  t.is(d.end, 'ECONNRESET', 'the destination sees a reset, not a clean FIN');
});

test.serial('a reset from the destination resets the client, also while the client only reads', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atClient = collect(r.client);
  r.dest.write('some bytes first');
  await until(() => r.progress.toClient > 0, 5_000, 'bytes to flow');
  r.dest.resetAndDestroy();
  const end = await within(r.link.ended, 5_000, 'the link to end');
  t.is(end.reason, 'error');
  t.is(end.code, 'ECONNRESET');
  const c = await within(atClient, 5_000, 'the client to see the end');
  t.is(c.end, 'ECONNRESET');
  t.is(c.bytes, 'some bytes first'.length);
});

test.serial('a destination that stops reading: the link holds at most its pipe sizes, then everything arrives', async (t) => {
  t.timeout(60_000);
  const pipeBytes = 256 * 1024;
  const r = await rig({ pipeBytes });
  teardown(t, r);
  t.is(r.link.pipeBytes, pipeBytes);
  r.dest.pause();
  const h = createHash('sha256');
  let written = 0;
  let maxBuffered = 0;
  const deadline = Date.now() + 10_000;
  const chunk = randomBytes(64 * 1024);
  // Write until the client's stream refuses for 300 ms straight (bounded by 256 MiB and 10 s).
  while (written < 256 * MiB && Date.now() < deadline) {
    h.update(chunk);
    written += chunk.length;
    maxBuffered = Math.max(maxBuffered, r.link.bufferedBytes());
    if (!r.client.write(chunk)) {
      const drained = await Promise.race([once(r.client, 'drain').then(() => true), sleep(300).then(() => false)]);
      maxBuffered = Math.max(maxBuffered, r.link.bufferedBytes());
      if (!drained) break;
    }
  }
  await sleep(100);
  maxBuffered = Math.max(maxBuffered, r.link.bufferedBytes());
  t.log(`wrote ${written} bytes before stalling; the link held at most ${maxBuffered} bytes (pipe ${pipeBytes} per direction)`);
  t.true(written < 256 * MiB, 'the writer stalls');
  t.true(maxBuffered > 0, 'the pipe was used');
  t.true(maxBuffered <= pipeBytes, `buffered ${maxBuffered} <= ${pipeBytes}`);
  const atDest = collect(r.dest);
  r.client.end();
  r.dest.resume();
  const d = await within(atDest, 20_000, 'drain after resume');
  t.is(d.bytes, written);
  t.is(d.sha256, h.digest('hex'));
});

test.serial('a large client prefix against a slow reader: written in order before the host bytes', async (t) => {
  const prefix = randomBytes(8 * MiB);
  const r = await rig({ toClientPrefix: [prefix] });
  teardown(t, r);
  t.true(r.link.bufferedBytes() >= prefix.length - 4 * MiB, 'unwritten prefix bytes count as buffered');
  r.client.pause();
  r.dest.end('after the prefix');
  await sleep(200);
  const atClient = collect(r.client);
  r.client.resume();
  const c = await within(atClient, 20_000, 'prefix and bytes');
  t.is(c.sha256, sha256(prefix, Buffer.from('after the prefix')));
});

test.serial('shutdownHost(write): FIN to the host after the bytes already relayed; shutdownHost(read): the client gets EOF', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atDest = collect(r.dest);
  r.client.write('before shutdown');
  await until(() => r.progress.toHost === 'before shutdown'.length, 5_000, 'bytes to reach the host');
  r.link.shutdownHost(false, true);
  const d = await within(atDest, 5_000, 'FIN at the destination');
  t.is(d.end, 'end');
  t.is(d.bytes, 'before shutdown'.length);
  const atClient = collect(r.client);
  r.dest.write('dropped?');
  await sleep(50);
  r.link.shutdownHost(true, false);
  const c = await within(atClient, 5_000, 'EOF at the client');
  t.is(c.end, 'end');
  // The destination still sends until its FIN; the link drops those bytes and then ends cleanly.
  r.dest.end('dropped for sure');
  r.client.end('dropped too');
  const end = await within(r.link.ended, 5_000, 'the link to end');
  t.is(end.reason, 'ok');
});

test.serial('host socket options through the link; EBADF once the link ended', async (t) => {
  const r = await rig();
  teardown(t, r);
  r.link.setHostSockopt('SO_SNDBUF', 96 * 1024);
  t.is(r.link.getHostSockopt('SO_SNDBUF'), 2 * 96 * 1024);
  r.link.setHostSockopt('TCP_NODELAY', 1);
  t.is(r.link.getHostSockopt('TCP_NODELAY'), 1);
  await r.link.close();
  t.throws(() => r.link.setHostSockopt('SO_SNDBUF', 8192), { message: /closed|ended/ });
});

test.serial('abort: close() resets both peers by default; close({ reset: false }) ends both cleanly', async (t) => {
  const r = await rig();
  teardown(t, r);
  const atDest = collect(r.dest);
  const atClient = collect(r.client);
  const end = await r.link.close();
  t.is(end.reason, 'aborted');
  t.is(await r.link.close(), end, 'close is idempotent');
  t.is((await within(atDest, 5_000, 'dest')).end, 'ECONNRESET');
  t.is((await within(atClient, 5_000, 'client')).end, 'ECONNRESET');
  const q = await rig();
  teardown(t, q);
  const qd = collect(q.dest);
  const qc = collect(q.client);
  t.is((await q.link.close({ reset: false })).reason, 'aborted');
  t.is((await within(qd, 5_000, 'dest')).end, 'end');
  t.is((await within(qc, 5_000, 'client')).end, 'end');
});

test.serial('abuse: bad arguments, wrong receivers, non-sockets, use after close, a busy or closed pump', async (t) => {
  const r = await rig();
  teardown(t, r);
  const Raw = binding.SpliceLink;
  t.throws(() => new Raw({} as never, 1, 2), { instanceOf: TypeError });
  t.throws(() => new Raw(pump.raw, -1, 2), { instanceOf: RangeError });
  t.throws(() => new Raw(pump.raw, 3, 4, 'nope' as never), { instanceOf: TypeError });
  t.throws(() => new Raw(pump.raw, 3, 4, [], [], { pipeBytes: 0 }), { instanceOf: RangeError });
  t.throws(() => (Raw as unknown as (...a: unknown[]) => unknown)(pump.raw, 3, 4), { instanceOf: TypeError });
  // A non-socket fd is refused, and the caller still owns both fds.
  const [a, b] = socketpair();
  const devnull = openSync('/dev/null', 'r+');
  t.throws(() => pump.splice(a, devnull), { message: /SpliceLink: Socket operation on non-socket/ });
  closeSync(devnull);
  closeFd(a);
  closeFd(b);
  // Wrong receiver.
  const shutdownHost = Object.getPrototypeOf(r.link.raw).shutdownHost as (this: unknown, a: boolean, b: boolean) => void;
  t.throws(() => shutdownHost.call({}, true, true), { instanceOf: TypeError });
  t.throws(() => r.link.shutdownHost('yes' as never, true), { instanceOf: TypeError });
  // The pump refuses to close while a link lives.
  t.throws(() => pump.close(), { message: /EBUSY|busy|still open/i });
  await r.link.close();
  t.true(r.link.raw.closed);
  t.throws(() => r.link.shutdownHost(false, true), { message: /closed/ });
  t.is(r.link.bufferedBytes(), 0);
  // A closed pump takes no links.
  const p2 = new Pump();
  p2.close();
  const x = await tcpPair();
  const y = await tcpPair();
  t.throws(() => p2.splice(x.fd, y.fd), { message: /closed/ });
  closeFd(x.fd);
  closeFd(y.fd);
  x.peer.destroy();
  y.peer.destroy();
});

test.serial('the events are the ring links\' (progress, fdEof/ringEof, end) and the pump stays quiet when idle', async (t) => {
  const events: PumpEvent[] = [];
  const p = new Pump((evs) => events.push(...evs), { unrefWhenIdle: true });
  const c = await tcpPair();
  const h = await tcpPair();
  const link = p.splice(c.fd, h.fd);
  const atDest = collect(h.peer);
  const atClient = collect(c.peer);
  c.peer.end('up');
  h.peer.end('down');
  await within(Promise.all([atDest, atClient]), 5_000, 'both ends');
  const end: SpliceEnd = await within(link.ended, 5_000, 'end');
  t.is(end.reason, 'ok');
  const kinds = events.filter((e) => 'link' in e && e.link === link.id).map((e) => e.type);
  t.true(kinds.includes('progress') && kinds.includes('fdEof') && kinds.includes('ringEof'));
  t.is(kinds[kinds.length - 1], 'end');
  t.is(kinds.filter((k) => k === 'end').length, 1, 'one end event');
  const n = events.length;
  await sleep(100);
  t.is(events.length, n, 'no events while idle');
  p.close();
  c.peer.destroy();
  h.peer.destroy();
});
