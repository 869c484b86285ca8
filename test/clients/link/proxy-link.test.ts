/**
 * The proxy's -L, -R and SOCKS5 CONNECT over native links, over shm and over
 * tcp: byte-exact (SHA-256) 64 MiB each way with a hook that fails if the
 * payload reaches a JS stream (the proxy and the gateway run in this
 * process), a slow reader (bounded buffering, bounded time), a peer that
 * vanishes mid-transfer, and descriptors: none leaked, none closed twice.
 */
import test from 'ava';
import { once } from 'node:events';
import { closeSync, fstatSync, openSync, readdirSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { hashUntilEnd, sendRandom, startGateway, tcpServer, within, type TestGateway } from '../../helpers/harness.js';
import { ipv4Address, socksOpen, socksRequest, startProxy } from '../proxy/helpers.js';
import { payloadHook } from './helpers.js';

const MIB = 1 << 20;
const BIG = 64 * MIB;
/** Control-plane bytes JS may see per transfer (gRPC frames, SOCKS handshake); the payload is 128 MiB. */
const CONTROL_BYTES_MAX = 256 * 1024;
/** What may pile up between a paused reader and its sender: kernel socket buffers, rings, pipes. */
const IN_FLIGHT_MAX = 48 * MIB;
const T_MS = 60_000;

let gw: TestGateway;
test.before(async () => {
  gw = await startGateway();
});
test.after.always(async () => {
  await gw?.stop();
});

/** A target server that hands out its connections in order. */
async function target(): Promise<{ uri: string; port: number; next(): Promise<Socket>; close(): Promise<void> }> {
  const queue: Socket[] = [];
  let wake: (() => void) | undefined;
  const srv = await tcpServer((c) => {
    queue.push(c);
    wake?.();
  });
  return {
    uri: srv.uri,
    port: srv.port,
    close: srv.close,
    async next() {
      await within((async () => { while (!queue.length) await new Promise<void>((r) => (wake = r)); })(), 10_000, 'target connection');
      return queue.shift()!;
    },
  };
}

function dial(addr: string): Promise<Socket> {
  const i = addr.lastIndexOf(':');
  const s = netConnect({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), allowHalfOpen: true });
  return once(s, 'connect').then(() => s);
}

/** 64 MiB each way between `a` and `b`, both half-closing after their send; hashes checked. */
async function bothWays(t: { is(a: unknown, b: unknown, m?: string): void }, a: Socket, b: Socket): Promise<void> {
  const atB = hashUntilEnd(b);
  const atA = hashUntilEnd(a);
  const [sentAB, sentBA] = await within(Promise.all([sendRandom(a, BIG, 256 * 1024), sendRandom(b, BIG, 256 * 1024)]), T_MS, 'sends');
  const [gotB, gotA] = await within(Promise.all([atB, atA]), T_MS, 'receives');
  t.is(gotB.bytes, BIG);
  t.is(gotB.sha256, sentAB, 'a -> b bytes exact');
  t.is(gotA.bytes, BIG);
  t.is(gotA.sha256, sentBA, 'b -> a bytes exact');
}

for (const transport of ['shm', 'tcp'] as const) {
  test.serial(`-L over ${transport}: 64 MiB each way, exact, payload never in JS`, async (t) => {
    const dest = await target();
    const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=${dest.uri}`], transport });
    const hook = payloadHook();
    try {
      const app = await dial(proxy.addresses.local[0]!.listen);
      hook.allow(app);
      const ts = await dest.next();
      hook.allow(ts);
      await bothWays(t, app, ts);
      t.true(hook.bytes() < CONTROL_BYTES_MAX, `payload reached JS: ${hook.bytes()} bytes pushed into JS streams`);
      t.is(proxy.localForwards[0]!.stats.opened, 1);
    } finally {
      hook.remove();
      await proxy.destroy();
      await dest.close();
    }
  });

  test.serial(`-R over ${transport}: 64 MiB each way, exact, payload never in JS`, async (t) => {
    const local = await target();
    const proxy = await startProxy(gw.target, { remote: [`tcp://127.0.0.1:0=127.0.0.1:${local.port}`], transport });
    const hook = payloadHook();
    try {
      const addr = proxy.remoteForwards[0]!.address.replace(/^tcp:\/\//, '');
      const hostClient = await dial(addr);
      hook.allow(hostClient);
      const ls = await local.next();
      hook.allow(ls);
      await bothWays(t, hostClient, ls);
      t.true(hook.bytes() < CONTROL_BYTES_MAX, `payload reached JS: ${hook.bytes()} bytes pushed into JS streams`);
    } finally {
      hook.remove();
      await proxy.destroy();
      await local.close();
    }
  });

  test.serial(`SOCKS5 CONNECT over ${transport}: 64 MiB each way after the handshake, exact, payload never in JS`, async (t) => {
    const dest = await target();
    const proxy = await startProxy(gw.target, { socks: '127.0.0.1:0', transport });
    const hook = payloadHook();
    try {
      const port = Number(proxy.addresses.socks!.split(':').pop());
      const r = await socksOpen(port);
      const rep = await socksRequest(r, 1, ipv4Address('127.0.0.1', dest.port));
      t.is(rep.rep, 0);
      const client = r.sock;
      client.removeAllListeners('data');
      client.removeAllListeners('end');
      hook.allow(client);
      const ts = await dest.next();
      hook.allow(ts);
      await bothWays(t, client, ts);
      t.true(hook.bytes() < CONTROL_BYTES_MAX, `payload reached JS: ${hook.bytes()} bytes pushed into JS streams`);
    } finally {
      hook.remove();
      await proxy.destroy();
      await dest.close();
    }
  });

  test.serial(`-L over ${transport}: a slow reader holds the sender back (bounded), then gets every byte`, async (t) => {
    const dest = await target();
    const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=${dest.uri}`], transport });
    try {
      const app = await dial(proxy.addresses.local[0]!.listen);
      app.pause();
      const ts = await dest.next();
      let sent = 0;
      const chunk = Buffer.alloc(256 * 1024, 7);
      // The reader does not read for a while: the sender must block well before 64 MiB.
      const deadline = Date.now() + 1_500;
      while (Date.now() < deadline && sent < BIG) {
        if (ts.write(chunk)) sent += chunk.length;
        else {
          sent += chunk.length;
          await Promise.race([once(ts, 'drain'), new Promise((r) => setTimeout(r, 200))]);
        }
      }
      t.true(sent + ts.writableLength <= IN_FLIGHT_MAX + ts.writableLength, `sender got ${sent} bytes out before the reader read anything`);
      t.true(sent - ts.writableLength < IN_FLIGHT_MAX, `${sent - ts.writableLength} bytes left the sender while nobody read`);
      // Now read: everything arrives, in a bounded time.
      const got = hashUntilEnd(app);
      app.resume();
      ts.end();
      const res = await within(got, T_MS, 'slow reader catches up');
      t.is(res.bytes, sent);
    } finally {
      await proxy.destroy();
      await dest.close();
    }
  });

  for (const who of ['target', 'app'] as const) {
    test.serial(`-L over ${transport}: the ${who} vanishes mid-transfer; the other side hears it, nothing hangs`, async (t) => {
      const dest = await target();
      const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=${dest.uri}`], transport });
      try {
        const app = await dial(proxy.addresses.local[0]!.listen);
        const ts = await dest.next();
        const [gone, other] = who === 'target' ? [ts, app] : [app, ts];
        gone.resume();
        other.resume();
        other.on('error', () => {});
        const heard = new Promise<string>((res) => {
          other.once('close', () => res('close'));
        });
        // The survivor keeps writing; halfway, the other end disappears (close with unread bytes: RST).
        const writing = (async () => {
          const chunk = Buffer.alloc(64 * 1024, 3);
          for (let i = 0; i < 512 && !other.destroyed; i++) {
            if (i === 64) gone.destroy();
            if (!other.write(chunk)) await new Promise<void>((r) => (other.once('drain', r), other.once('close', r)));
          }
        })();
        t.is(await within(heard, 20_000, `the ${who === 'target' ? 'app' : 'target'} hears the loss`), 'close');
        await writing;
        await within((async () => { while (proxy.localForwards[0]!.sessionsOpen > 0) await new Promise((r) => setTimeout(r, 20)); })(), 10_000, 'the link ends');
      } finally {
        await proxy.destroy();
        await dest.close();
      }
    });
  }

  test.serial(`-L over ${transport}: every descriptor handed to a link is closed, and only once`, async (t) => {
    const dest = await target();
    const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=${dest.uri}`], transport });
    const fds = () => readdirSync('/proc/self/fd').length;
    try {
      // Warm up (sessions, pumps, pipes), then count.
      const warm = await dial(proxy.addresses.local[0]!.listen);
      const wt = await dest.next();
      warm.end();
      wt.end();
      wt.resume();
      warm.resume();
      await once(warm, 'close');
      await within((async () => { while (proxy.localForwards[0]!.sessionsOpen > 0) await new Promise((r) => setTimeout(r, 20)); })(), 10_000, 'warm-up link ends');
      const before = fds();
      // Sentinels opened while links come and go: a second close of a link's fd number would hit one of them.
      const sentinels: number[] = [];
      for (let i = 0; i < 8; i++) {
        const app = await dial(proxy.addresses.local[0]!.listen);
        const ts = await dest.next();
        app.resume();
        ts.resume();
        app.end('x');
        ts.end('y');
        await once(app, 'close');
        sentinels.push(openSync('/dev/null', 'r'));
      }
      await within((async () => { while (proxy.localForwards[0]!.sessionsOpen > 0) await new Promise((r) => setTimeout(r, 20)); })(), 10_000, 'links end');
      await new Promise((r) => setTimeout(r, 200));
      for (const fd of sentinels) t.notThrows(() => fstatSync(fd), `sentinel fd ${fd} was closed by someone else`);
      for (const fd of sentinels) closeSync(fd);
      await within((async () => { while (fds() > before) await new Promise((r) => setTimeout(r, 50)); })(), 10_000, `descriptors back to ${before} (now ${fds()})`);
      t.pass();
    } finally {
      await proxy.destroy();
      await dest.close();
    }
  });
}
