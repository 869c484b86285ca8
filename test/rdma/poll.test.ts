/**
 * Adaptive completion-queue polling of the rdma connections (`pollUs`,
 * native/RDMA.md "Polling"), both ends in one process on rxe0 inside the
 * Soft-RoCE test VM (SOCKGATE_IN_VM=1; on the host it skips with a message).
 *
 * Checks: with pollUs on both ends (and the pump's own spin off) a 64 B
 * ping-pong and an 8 MiB stream each way arrive intact (SHA-256), the pump's
 * spin found completions (spinHits > 0: the CQ was polled, not only armed),
 * and once the traffic stops the connection costs no spinning (the adaptive
 * budget falls to 0: no spins while idle); pollUs out of range is refused.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { binding, Pump, rdma, type PumpEvent, type RdmaEvent } from '../../native/index.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const T_MS = Number(process.env['SOCKGATE_RDMA_WAIT_MS'] || 120_000);
/** The poll budget both ends use (µs). */
const POLL_US = 200;
/** Round trips of the ping-pong: enough for the adaptive budget to settle. */
const ROUNDS = 300;
const MSG = 64;
/** Idle spell after the traffic: no spin may happen in it. */
const IDLE_MS = 1500;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function pair(): { fd: number; sock: Socket } {
  const [a, b] = binding.socketpair();
  return { fd: a, sock: new Socket({ fd: b, allowHalfOpen: true, readable: true, writable: true }) };
}

/** The first event matching `pred` (seen already or to come); fails after T_MS. */
function waiter(log: RdmaEvent[], subs: Array<() => void>) {
  return (pred: (e: RdmaEvent) => boolean, what: string): Promise<RdmaEvent> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(log.slice(-10))}`)), T_MS);
      const check = () => {
        const e = log.find(pred);
        if (!e) return false;
        clearTimeout(timer);
        resolve(e);
        return true;
      };
      if (!check()) subs.push(() => void check());
    });
}

/** `n` bytes from `s`, within T_MS. */
function readN(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const timer = setTimeout(() => reject(new Error(`${have} of ${n} bytes within ${T_MS} ms`)), T_MS);
    const onData = (d: Buffer) => {
      parts.push(d);
      have += d.length;
      if (have < n) return;
      clearTimeout(timer);
      s.off('data', onData);
      resolve(Buffer.concat(parts));
    };
    s.on('data', onData);
  });
}

if (!IN_VM) {
  test.skip('rdma CQ polling: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('pollUs: ping-pong and streams intact (SHA-256), the spin polls the CQ, idle costs no spin', async (t) => {
    const log: RdmaEvent[] = [];
    const subs: Array<() => void> = [];
    // The pump's own spin (shm) stays off: every spin here is the connections' polling.
    const pump = new Pump((events: PumpEvent[]) => {
      for (const e of events) if (e.type === 'rdma') log.push(e);
      for (const f of subs) f();
    });
    t.teardown(() => pump.raw.closed || pump.close());
    const wait = waiter(log, subs);
    const opts = { ringLog2: 16, pollUs: POLL_US, keepaliveMs: 0 };
    const listener = rdma.listen!(pump.raw, { addr: ADDR, port: 18631, ...opts });
    const client = rdma.connect!(pump.raw, { addr: ADDR, port: listener.port, token: randomBytes(16), ...opts });
    const req = await wait((e) => e.rdma === listener.id && e.event === 'request', 'request');
    const server = listener.accept(req.event === 'request' ? req.conn : -1);
    await wait((e) => e.rdma === client.id && e.event === 'established', 'client established');
    await wait((e) => e.rdma === server.id && e.event === 'established', 'server established');
    const c = pair();
    const s = pair();
    client.link(0, c.fd);
    server.link(0, s.fd);
    // The teardown at the end resets the slots: errors then are expected (the hashes are the check).
    c.sock.on('error', () => {});
    s.sock.on('error', () => {});

    // Ping-pong: the server side echoes; every round trip checked at the end by hash.
    s.sock.pipe(s.sock, { end: false });
    const sent = randomBytes(ROUNDS * MSG);
    const echoed: Buffer[] = [];
    const before = pump.stats();
    for (let i = 0; i < ROUNDS; i++) {
      const back = readN(c.sock, MSG);
      c.sock.write(sent.subarray(i * MSG, (i + 1) * MSG));
      echoed.push(await back);
    }
    t.is(sha(Buffer.concat(echoed)), sha(sent));
    const afterPing = pump.stats();
    t.true(afterPing.spinHits > before.spinHits, `the spin found no completion in ${ROUNDS} round trips (${JSON.stringify(afterPing)})`);
    s.sock.unpipe(s.sock);
    s.sock.resume(); // unpipe left it paused: readN's 'data' listener alone would not restart it

    // Streams both ways, hashed.
    const up = randomBytes(8 << 20);
    const down = randomBytes(8 << 20);
    const gotUp = readN(s.sock, up.length);
    const gotDown = readN(c.sock, down.length);
    c.sock.write(up);
    s.sock.write(down);
    const [u, d] = await Promise.all([gotUp, gotDown]);
    t.is(sha(u.subarray(0, up.length)), sha(up));
    t.is(u.length, up.length);
    t.is(sha(d.subarray(0, down.length)), sha(down));
    t.is(d.length, down.length);

    // Idle: once the last events settled, the connections cost no spinning.
    await new Promise((r) => setTimeout(r, 500));
    const idle0 = pump.stats();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const idle1 = pump.stats();
    t.true(idle1.spins - idle0.spins <= 1, `${idle1.spins - idle0.spins} spins in ${IDLE_MS} ms of idle (budget ${idle1.spinBudgetUs} µs)`);

    c.sock.destroy();
    s.sock.destroy();
    client.close();
    await wait((e) => e.rdma === server.id && e.event === 'closed', 'server closed');
    listener.close();
  });

  test.serial('pollUs out of range is refused', (t) => {
    const pump = new Pump(() => {});
    t.teardown(() => pump.close());
    t.throws(() => rdma.listen!(pump.raw, { addr: ADDR, port: 0, pollUs: 1001 }), { message: /pollUs/ });
    t.throws(() => rdma.connect!(pump.raw, { addr: ADDR, port: 1, token: randomBytes(16), pollUs: -1 }), { message: /pollUs/ });
  });
}
