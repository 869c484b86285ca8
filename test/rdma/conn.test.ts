/**
 * The rdma transport's native connections (native/src/rdma_conn*.cc) on a real
 * kernel RDMA stack, both ends in one process on rxe0 (topology (a)): a
 * listener and a client connection on the pump's I/O thread, slots linked to
 * kernel stream sockets (socketpairs), bytes moved by RDMA writes without JS
 * per chunk. Runs INSIDE the Soft-RoCE test VM (SOCKGATE_IN_VM=1); on the
 * host it skips with a message.
 *
 * Checks: connect/accept with the token in the private data; one slot and
 * several slots at once, both directions, SHA-256 checked; half-close (EOF
 * each way, then both sides free the slot: slotEnd ok); BIND of a later slot,
 * answered with BOUND when the gateway links it and CLOSE when it refuses;
 * closeSlot aborts (the peer sees a reset); a rejected request (REJECTED);
 * connection close ends the open slots (ECONNABORTED); byte counts reach JS
 * in rate-limited `progress` batches that add up to the slotEnd totals;
 * the protocol's checks: a client of protocol 1 is refused (VERSION_MISMATCH), a
 * peer whose burst claims a wrap that does not fit is cut off
 * (ERR_SOCKGATE_RDMA_PROTOCOL) without disturbing another connection; the
 * failures verbs report: a write with a wrong rkey (ERR_SOCKGATE_RDMA_QP_FATAL),
 * the port going down with its netdev (ERR_SOCKGATE_RDMA_PORT_DOWN; on an rxe
 * device of its own, made on a veth pair).
 */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../helpers/test-addon.js';
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { binding, Pump, rdma, type PumpEvent, type RawRdmaConn, type RawRdmaListener, type RdmaEvent } from '../../native/index.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const T_MS = Number(process.env['SOCKGATE_RDMA_WAIT_MS'] || 120_000);
/** The port-down test's own netdev (one end of a veth pair), address and rxe device. */
const PD_NETDEV = 'sgpd0';
const PD_ADDR = '10.98.0.1';
const PD_RXE = 'sgrxe1';

/** Runs a command (ip, rdma: both in /usr/bin); '' when it succeeded, else what went wrong. */
function run(cmd: string, ...args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? '' : `${cmd} ${args.join(' ')}: ${r.error?.message ?? `exit ${r.status}: ${r.stderr}`}`;
}
const ip = (...args: string[]): string => run('ip', ...args);

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Routes rdma events by id; waiters resolve on a matching event. */
class Router {
  readonly log: RdmaEvent[] = [];
  readonly #waiters: Array<{ pred: (e: RdmaEvent) => boolean; resolve: (e: RdmaEvent) => void }> = [];
  readonly pump: Pump;
  constructor() {
    this.pump = new Pump((events: PumpEvent[]) => {
      for (const e of events) {
        if (e.type !== 'rdma') continue;
        this.log.push(e);
        for (let i = 0; i < this.#waiters.length; i++) {
          const w = this.#waiters[i]!;
          if (w.pred(e)) {
            this.#waiters.splice(i, 1);
            i--;
            w.resolve(e);
          }
        }
      }
    });
  }
  wait(pred: (e: RdmaEvent) => boolean, what: string, ms = T_MS): Promise<RdmaEvent> {
    const seen = this.log.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.log.slice(-20))}`)), ms);
      this.#waiters.push({
        pred,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }
}

/** A socketpair: `fd` goes to the native link, `sock` stays in JS. */
function pair(): { fd: number; sock: Socket } {
  const [a, b] = binding.socketpair();
  return { fd: a, sock: new Socket({ fd: b, allowHalfOpen: true, readable: true, writable: true }) };
}

/** Everything `s` sends until its end; fails (never hangs) if the end does not come within T_MS. */
function readAll(s: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error(`no end within ${T_MS} ms after ${parts.reduce((n, b) => n + b.length, 0)} bytes`)), T_MS);
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(parts));
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** The first `n` bytes `s` sends (the rest stays unread); fails if they do not come within T_MS. */
function readExactly(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const timer = setTimeout(() => done(new Error(`${have} of ${n} bytes within ${T_MS} ms`)), T_MS);
    const onData = (d: Buffer) => {
      parts.push(d);
      have += d.length;
      if (have >= n) done();
    };
    const onEnd = () => done(new Error(`end after ${have} of ${n} bytes`));
    const done = (err?: Error) => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('end', onEnd);
      s.pause();
      if (err) reject(err);
      else resolve(Buffer.concat(parts).subarray(0, n));
    };
    s.on('data', onData);
    s.once('end', onEnd);
  });
}

/** `n` random bytes from `from` to `to`, then both ends close: SHA-256 checked, and nothing came back. */
async function oneWay(t: ExecutionContext, from: Socket, to: Socket, n: number): Promise<void> {
  const msg = randomBytes(n);
  const got = readAll(to);
  // Read the sender's side from the start: an empty socket may emit 'end' before anyone listens.
  const back = readAll(from);
  from.end(msg);
  to.end();
  t.is(sha(await got), sha(msg));
  t.is((await back).length, 0);
}

/**
 * A well-behaved connection (slot 0 linked both sides) and beside it one whose
 * client misbehaves as `hostile` says (slot 0 linked, 1000 bytes written).
 */
async function besideHostile(r: Router, goodPort: number, badPort: number, hostile: 1 | 4) {
  const good = await connected(r, goodPort, { ringLog2: 14 });
  const gc = pair();
  const gs = pair();
  good.client.link(0, gc.fd);
  good.server.link(0, gs.fd);
  const badListener = rdma.listen!(r.pump.raw, { addr: ADDR, port: badPort });
  const bad = rdma.connect!(r.pump.raw, { addr: ADDR, port: badListener.port, token: randomBytes(16), hostile });
  const req = await r.wait((e) => e.rdma === badListener.id && e.event === 'request', 'hostile request');
  const badServer = badListener.accept(req.event === 'request' ? req.conn : -1);
  await r.wait((e) => e.rdma === bad.id && e.event === 'established', 'hostile established');
  const bc = pair();
  const bs = pair();
  bs.sock.on('error', () => {});
  bc.sock.on('error', () => {});
  bad.link(0, bc.fd);
  badServer.link(0, bs.fd);
  bc.sock.write(randomBytes(1000));
  return { good, gc, gs, bad, badServer, badListener };
}

/** besideHostile's good connection still echoes `n` bytes (SHA-256 checked); then both listeners close. */
async function goodCarriesOn(t: ExecutionContext, r: Router, h: Awaited<ReturnType<typeof besideHostile>>, n: number): Promise<void> {
  const data = randomBytes(n);
  const back = readAll(h.gc.sock);
  h.gs.sock.pipe(h.gs.sock);
  h.gc.sock.end(data);
  t.is(sha(await back), sha(data));
  h.good.client.close();
  await r.wait((e) => e.rdma === h.good.server.id && e.event === 'closed', 'good server closed');
  h.good.listener.close();
  h.badListener.close();
  await new Promise((res) => setTimeout(res, 200));
}

async function connected(r: Router, port: number, opts: { ringLog2?: number; slots?: number; credits?: number } = {}, addr = ADDR) {
  const token = randomBytes(16);
  const listener: RawRdmaListener = rdma.listen!(r.pump.raw, { addr, port, ...opts });
  const client: RawRdmaConn = rdma.connect!(r.pump.raw, { addr, port: listener.port, token, ...opts });
  const req = await r.wait((e) => e.rdma === listener.id && e.event === 'request', 'request');
  if (req.event !== 'request') throw new Error('unreachable');
  const server = listener.accept(req.conn);
  await r.wait((e) => e.rdma === client.id && (e.event === 'established' || e.event === 'failed'), 'client established');
  await r.wait((e) => e.rdma === server.id && (e.event === 'established' || e.event === 'failed'), 'server established');
  const bad = r.log.find((e) => (e.rdma === client.id || e.rdma === server.id) && e.event === 'failed');
  if (bad) throw new Error(`connection failed: ${JSON.stringify(bad)}`);
  return { listener, client, server, token, req };
}

if (!IN_VM) {
  test.skip('rdma connections: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('connect/accept carries the token; one slot both ways, 8 MiB each, SHA-256; half-close frees the slot', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const { listener, client, server, token, req } = await connected(r, 18601, { ringLog2: 16 });
    t.deepEqual(req.event === 'request' ? [...req.token] : [], [...token]);
    const c = pair();
    const s = pair();
    client.link(0, c.fd);
    server.link(0, s.fd);
    const up = randomBytes(8 << 20);
    const down = randomBytes(8 << 20);
    const gotUp = readAll(s.sock);
    const gotDown = readAll(c.sock);
    const t0 = Date.now();
    c.sock.end(up);
    s.sock.end(down);
    const [u, d] = await Promise.all([gotUp, gotDown]);
    const elapsed = Date.now() - t0 + 1000;
    t.is(u.length, up.length);
    t.is(sha(u), sha(up));
    t.is(d.length, down.length);
    t.is(sha(d), sha(down));
    const endC = await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd', 'client slotEnd');
    const endS = await r.wait((e) => e.rdma === server.id && e.event === 'slotEnd', 'server slotEnd');
    t.like(endC, { reason: 'ok', errno: 0, totalToFd: down.length, totalToPeer: up.length });
    t.like(endS, { reason: 'ok', errno: 0, totalToFd: up.length, totalToPeer: down.length });
    // progress: batches (not one per burst) whose sums are the slotEnd totals.
    for (const [id, end] of [[client.id, endC], [server.id, endS]] as const) {
      const upTo = r.log.indexOf(end);
      const prog = r.log.slice(0, upTo).filter((e) => e.rdma === id && e.event === 'progress' && e.slot === 0);
      const sum = (k: 'toFd' | 'toPeer') => prog.reduce((n, e) => n + (e.event === 'progress' ? e[k] : 0), 0);
      if (end.event !== 'slotEnd') throw new Error('unreachable');
      t.is(sum('toFd'), end.totalToFd);
      t.is(sum('toPeer'), end.totalToPeer);
      t.true(prog.length <= 2 + Math.ceil(elapsed / 250) * 2, `${prog.length} progress events in ${elapsed} ms`);
    }
    t.truthy(r.log.find((e) => e.rdma === server.id && e.event === 'peerEof'));
    t.truthy(r.log.find((e) => e.rdma === client.id && e.event === 'fdEof'));
    // The slot is reusable: a second socket on slot 0 with BIND.
    const c2 = pair();
    const s2 = pair();
    const bindToken = randomBytes(16);
    client.link(0, c2.fd, bindToken);
    const bind = await r.wait((e) => e.rdma === server.id && e.event === 'bind', 'bind');
    t.like(bind, { slot: 0 });
    t.deepEqual(bind.event === 'bind' ? [...bind.token] : [], [...bindToken]);
    server.link(0, s2.fd);
    t.like(await r.wait((e) => e.rdma === client.id && e.event === 'bound', 'bound'), { slot: 0 });
    await oneWay(t, c2.sock, s2.sock, 100_000);
    client.close();
    await r.wait((e) => e.rdma === client.id && e.event === 'closed', 'client closed');
    await r.wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });

  test.serial('a BIND is answered: CLOSE when the gateway refuses it (the client sees reset, never bound), BOUND when it links the slot', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const { listener, client, server } = await connected(r, 18605, { ringLog2: 14, slots: 4 });
    // Refused: the gateway closes the slot it was asked to bind.
    const refused = pair();
    const refusedEnd = readAll(refused.sock).catch((err: Error) => err);
    client.link(1, refused.fd, randomBytes(16));
    const firstBind = await r.wait((e) => e.rdma === server.id && e.event === 'bind' && e.slot === 1, 'bind 1');
    server.closeSlot(1, true);
    t.like(await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd' && e.slot === 1, 'refused slotEnd'), { reason: 'reset', totalToFd: 0, totalToPeer: 0 });
    t.like(await r.wait((e) => e.rdma === server.id && e.event === 'slotEnd' && e.slot === 1, 'server slotEnd'), { reason: 'aborted' });
    t.falsy(r.log.find((e) => e.rdma === client.id && e.event === 'bound'), 'no BOUND for a refused BIND');
    await refusedEnd;
    // The connection carries on: the same slot bound anew and linked, bytes both ways.
    const c = pair();
    const s = pair();
    client.link(1, c.fd, randomBytes(16));
    await r.wait((e) => e !== firstBind && e.rdma === server.id && e.event === 'bind' && e.slot === 1, 'second bind 1');
    // The gateway's host bytes are there before it links: they follow BOUND.
    const down = randomBytes(300_000);
    s.sock.write(down);
    server.link(1, s.fd);
    t.like(await r.wait((e) => e.rdma === client.id && e.event === 'bound', 'bound 1'), { slot: 1 });
    const up = randomBytes(200_000);
    const gotUp = readAll(s.sock);
    const gotDown = readAll(c.sock);
    c.sock.end(up);
    s.sock.end();
    t.is(sha(await gotUp), sha(up));
    t.is(sha(await gotDown), sha(down));
    t.like(await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd' && e.slot === 1 && e.reason === 'ok', 'slotEnd ok'), { totalToFd: down.length, totalToPeer: up.length });
    t.falsy(r.log.find((e) => (e.rdma === client.id || e.rdma === server.id) && e.event === 'closed'), 'the connection stayed up');
    client.close();
    await r.wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });

  test.serial('many slots on one connection at once, each SHA-256 checked (ring smaller than the data)', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const { listener, client, server } = await connected(r, 18602, { ringLog2: 14, slots: 16, credits: 16 });
    const n = 8;
    const jobs: Array<Promise<void>> = [];
    for (let i = 0; i < n; i++) {
      const c = pair();
      const s = pair();
      if (i === 0) client.link(i, c.fd);
      else client.link(i, c.fd, randomBytes(16));
      if (i > 0) await r.wait((e) => e.rdma === server.id && e.event === 'bind' && e.slot === i, `bind ${i}`);
      server.link(i, s.fd);
      if (i > 0) await r.wait((e) => e.rdma === client.id && e.event === 'bound' && e.slot === i, `bound ${i}`);
      const data = randomBytes(512 * 1024 + i * 977);
      // Echo on the server side: what comes in goes back.
      s.sock.pipe(s.sock);
      const back = readAll(c.sock);
      c.sock.end(data);
      jobs.push(back.then((b) => {
        t.is(sha(b), sha(data), `slot ${i}`);
      }));
    }
    await Promise.all(jobs);
    for (let i = 0; i < n; i++) await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd' && e.slot === i, `slotEnd ${i}`);
    client.close();
    await r.wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });

  test.serial('protocol 3: a client of protocol 1 is refused with VERSION_MISMATCH; a burst claiming a wrap that does not fit ends only its connection', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const listener = rdma.listen!(r.pump.raw, { addr: ADDR, port: 18607 });
    // Protocol 1 in the private data: the listener refuses it, naming its own version.
    const old = rdma.connect!(r.pump.raw, { addr: ADDR, port: listener.port, token: randomBytes(16), hostile: 2 });
    const failed = await r.wait((e) => e.rdma === old.id && e.event === 'failed', 'version refused');
    t.like(failed, { code: 'VERSION_MISMATCH' });
    t.regex(failed.event === 'failed' ? failed.message : '', /speaks rdma protocol version 3, this side 1/);
    t.falsy(r.log.find((e) => e.rdma === listener.id && e.event === 'request'), 'no request reached JS');
    listener.close();

    // A well-behaved connection and a hostile one side by side.
    const h = await besideHostile(r, 18608, 18609, 1);
    const { bad, badServer } = h;
    const cut = await r.wait((e) => e.rdma === badServer.id && e.event === 'closed', 'hostile connection cut off');
    t.like(cut, { code: 'ERR_SOCKGATE_RDMA_PROTOCOL' });
    t.regex(cut.event === 'closed' ? cut.message : '', /wrapped burst from the ring's start on slot 0/);
    t.like(await r.wait((e) => e.rdma === bad.id && e.event === 'closed', 'hostile client closed'), { code: 'ERR_SOCKGATE_RDMA_DISCONNECTED' });
    // The good connection still carries bytes both ways, wrapping its 16 KiB rings many times.
    await goodCarriesOn(t, r, h, 3 << 20);
  });

  test.serial('closeSlot resets the peer; a rejected request fails with REJECTED; close ends open slots', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const { listener, client, server } = await connected(r, 18603);
    const c = pair();
    const s = pair();
    client.link(0, c.fd);
    server.link(0, s.fd);
    c.sock.write('hello');
    await new Promise<void>((res) => s.sock.once('data', () => res()));
    // A socketpair cannot carry a reset (SO_LINGER 0 on AF_UNIX is a plain
    // close): the slot's end event is what tells its owner (the SDK turns it
    // into the socket's error), and the fd is closed.
    const closed = new Promise<void>((res) => {
      c.sock.once('end', () => res());
      c.sock.once('error', () => res());
      c.sock.resume();
    });
    server.closeSlot(0, true);
    const endS = await r.wait((e) => e.rdma === server.id && e.event === 'slotEnd', 'server slotEnd');
    t.like(endS, { reason: 'aborted' });
    const endC = await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd', 'client slotEnd');
    t.like(endC, { reason: 'reset', code: 'ECONNRESET' });
    await closed;

    // Reject: a second client is refused.
    const other = rdma.connect!(r.pump.raw, { addr: ADDR, port: listener.port, token: randomBytes(16) });
    const req = await r.wait((e) => e.rdma === listener.id && e.event === 'request' && e.conn !== server.id, 'second request');
    if (req.event === 'request') listener.reject(req.conn);
    const failed = await r.wait((e) => e.rdma === other.id && e.event === 'failed', 'rejected');
    t.like(failed, { code: 'REJECTED' });

    // Close with an open slot: it ends with ECONNABORTED here, and the peer's slot fails too.
    const c2 = pair();
    const s2 = pair();
    client.link(1, c2.fd, randomBytes(16));
    await r.wait((e) => e.rdma === server.id && e.event === 'bind' && e.slot === 1, 'bind 1');
    server.link(1, s2.fd);
    client.close();
    const endC2 = await r.wait((e) => e.rdma === client.id && e.event === 'slotEnd' && e.slot === 1, 'client slotEnd 1');
    t.like(endC2, { reason: 'aborted', code: 'ECONNABORTED' });
    const closedS = await r.wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    t.like(closedS, { code: 'ERR_SOCKGATE_RDMA_DISCONNECTED' });
    const endS2 = await r.wait((e) => e.rdma === server.id && e.event === 'slotEnd' && e.slot === 1, 'server slotEnd 1');
    t.like(endS2, { reason: 'error', code: 'ERR_SOCKGATE_RDMA_DISCONNECTED' });
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });

  test.serial('keepalive: both ends use the smaller interval, so a peer that asked for none is not timed out; an idle connection survives, then carries bytes', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const token = randomBytes(16);
    // The gateway side checks every 300 ms (times out after 900 ms of silence); the client asks for no keepalive.
    const listener = rdma.listen!(r.pump.raw, { addr: ADDR, port: 18604, keepaliveMs: 300 });
    const client = rdma.connect!(r.pump.raw, { addr: ADDR, port: listener.port, token, keepaliveMs: 0 });
    const req = await r.wait((e) => e.rdma === listener.id && e.event === 'request', 'request');
    if (req.event !== 'request') throw new Error('unreachable');
    const server = listener.accept(req.conn);
    await r.wait((e) => e.rdma === client.id && e.event === 'established', 'client established');
    await r.wait((e) => e.rdma === server.id && e.event === 'established', 'server established');
    // Idle for ten of the server's intervals.
    await new Promise((res) => setTimeout(res, 3_000));
    t.falsy(r.log.find((e) => (e.rdma === client.id || e.rdma === server.id) && (e.event === 'closed' || e.event === 'failed')), JSON.stringify(r.log.slice(-5)));
    const c = pair();
    const s = pair();
    client.link(0, c.fd);
    server.link(0, s.fd);
    await oneWay(t, c.sock, s.sock, 1 << 20);
    client.close();
    await r.wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });

  test.serial('a write the peer refuses (a wrong rkey) fails that connection with ERR_SOCKGATE_RDMA_QP_FATAL, and its slot with it; another connection carries on', async (t) => {
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const h = await besideHostile(r, 18612, 18613, 4);
    const { bad, badServer } = h;
    // The writer's completion says remote access error; its connection ends with the QP.
    const cut = await r.wait((e) => e.rdma === bad.id && e.event === 'closed', 'writer closed');
    t.like(cut, { code: 'ERR_SOCKGATE_RDMA_QP_FATAL' });
    t.regex(cut.event === 'closed' ? cut.message : '', /work completion: remote access error/i);
    t.like(await r.wait((e) => e.rdma === bad.id && e.event === 'slotEnd', 'writer slotEnd'), { slot: 0, reason: 'error', code: 'ERR_SOCKGATE_RDMA_QP_FATAL' });
    // The responder's QP went to the error state (its async event or flushed receives), or the writer's disconnect came first.
    const other = await r.wait((e) => e.rdma === badServer.id && e.event === 'closed', 'responder closed');
    t.true(['ERR_SOCKGATE_RDMA_QP_FATAL', 'ERR_SOCKGATE_RDMA_DISCONNECTED'].includes(other.event === 'closed' ? other.code : ''), JSON.stringify(other));
    await goodCarriesOn(t, r, h, 2 << 20);
  });

  test.serial('a port that goes down (its netdev down: rxe reports PORT_ERR) fails its connections and their slots with ERR_SOCKGATE_RDMA_PORT_DOWN; new connections on it fail cleanly', async (t) => {
    // On a device of its own (an rxe on a veth made here), so that the tests running beside this one on rxe0 keep their port.
    for (const cmd of [
      ['link', 'add', PD_NETDEV, 'type', 'veth', 'peer', 'name', `${PD_NETDEV}p`],
      ['addr', 'add', `${PD_ADDR}/24`, 'dev', PD_NETDEV],
      ['link', 'set', `${PD_NETDEV}p`, 'up'],
      ['link', 'set', PD_NETDEV, 'up'],
    ]) t.is(ip(...cmd), '');
    t.is(run('rdma', 'link', 'add', PD_RXE, 'type', 'rxe', 'netdev', PD_NETDEV), '');
    const state = `/sys/class/infiniband/${PD_RXE}/ports/1/state`;
    const until = Date.now() + 30_000;
    while (!(existsSync(state) && readFileSync(state, 'utf8').includes('ACTIVE')) && Date.now() < until) await new Promise((res) => setTimeout(res, 100));
    t.regex(readFileSync(state, 'utf8'), /ACTIVE/);
    const r = new Router();
    t.teardown(() => r.pump.raw.closed || r.pump.close());
    const { listener, client, server } = await connected(r, 18614, { ringLog2: 14 }, PD_ADDR);
    const c = pair();
    const s = pair();
    c.sock.on('error', () => {});
    s.sock.on('error', () => {});
    client.link(0, c.fd);
    server.link(0, s.fd);
    const first = randomBytes(64 << 10);
    const got = readExactly(s.sock, first.length);
    c.sock.write(first);
    t.is(sha(await got), sha(first), 'the port carried bytes before');
    t.is(ip('link', 'set', PD_NETDEV, 'down'), '');
    for (const [id, who] of [[client.id, 'client'], [server.id, 'server']] as const) {
      t.like(await r.wait((e) => e.rdma === id && e.event === 'closed', `${who} closed`), { code: 'ERR_SOCKGATE_RDMA_PORT_DOWN' }, who);
      t.like(await r.wait((e) => e.rdma === id && e.event === 'slotEnd', `${who} slotEnd`), { reason: 'error', code: 'ERR_SOCKGATE_RDMA_PORT_DOWN' }, who);
    }
    t.regex(readFileSync(state, 'utf8'), /DOWN/);
    // A new connection on the down port fails (the SDK then falls back to tcp). rxe on 6.1 does not carry
    // rdma_cm connections on this port again even once its netdev is up (a fresh process neither), so the
    // device stays down; the VM is thrown away after the suite.
    const late = rdma.connect!(r.pump.raw, { addr: PD_ADDR, port: listener.port, token: randomBytes(16), timeoutMs: 3000 });
    const failed = await r.wait((e) => e.rdma === late.id && (e.event === 'failed' || e.event === 'established'), 'late connect');
    t.is(failed.event, 'failed', JSON.stringify(failed));
    listener.close();
    await new Promise((res) => setTimeout(res, 200));
  });
}
