/**
 * The attach handshake across processes (SCM_RIGHTS, SO_PEERCRED) with data
 * checked by SHA-256, refusal, and a hostile client that scribbles its shared
 * memory: only its session ends (ERR_SOCKGATE_RING_CORRUPT), the other
 * session's bytes stay intact, the gateway survives.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { attachClient, AttachRefusedError, Eventfd, Pump, ShmRegion, socketpair, type PumpEvent } from '../../native/index.js';
import { prng, sha256, until } from './helpers.js';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'attach-child.js');
const SLOT = 3;

interface Session {
  region: ShmRegion;
  gwBell: Eventfd;
  clBell: Eventfd;
  conn: number;
  pid: number;
  uid: number;
  dest: net.Socket;
  destBytes: Buffer[];
  destEnded: boolean;
  linkEnd?: Extract<PumpEvent, { type: 'end' }>;
  corrupt: boolean;
}

function runChild(args: string[]): { done: Promise<{ code: number | null; out: string; err: string }>; pid: number } {
  const c = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  c.stdout.on('data', (d) => (out += d));
  c.stderr.on('data', (d) => (err += d));
  const done = new Promise<{ code: number | null; out: string; err: string }>((res) => {
    const timer = setTimeout(() => c.kill('SIGKILL'), 60_000);
    c.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, out, err });
    });
  });
  return { done, pid: c.pid! };
}

/** A gateway: listener + pump; each accepted attach gets a region, a slot and a socketpair destination. */
function gateway(path: string, destPayload: (token: string) => Buffer) {
  const sessions = new Map<string, Session>();
  const byRegion = new Map<number, Session>();
  const byLink = new Map<number, Session>();
  const attaches: Extract<PumpEvent, { type: 'attach' }>[] = [];
  let listener: ReturnType<Pump['listen']> | undefined;
  const pump = new Pump((evs) => {
    for (const e of evs) {
      if (e.type === 'attach') {
        attaches.push(e);
        const token = e.token.toString();
        if (token === 'refuse-me') {
          listener!.reject(e.conn, 77);
          continue;
        }
        const region = ShmRegion.create({ slots: 8, maxRingSize: 1 << 20 });
        const gwBell = new Eventfd();
        const clBell = new Eventfd();
        region.setDoorbells(gwBell, clBell);
        region.openSlot(SLOT, 16384);
        const [a, b] = socketpair();
        const dest = new net.Socket({ fd: b, readable: true, writable: true, allowHalfOpen: true });
        const s: Session = { region, gwBell, clBell, conn: e.conn, pid: e.pid, uid: e.uid, dest, destBytes: [], destEnded: false, corrupt: false };
        dest.on('data', (d: Buffer) => s.destBytes.push(d));
        dest.on('end', () => (s.destEnded = true));
        dest.on('error', () => {});
        dest.end(destPayload(token));
        const link = pump.link(region, SLOT, a);
        sessions.set(token, s);
        byRegion.set(region.id, s);
        byLink.set(link.id, s);
        listener!.accept(e.conn, region, gwBell, clBell);
      } else if (e.type === 'end') {
        const s = byLink.get(e.link);
        if (s) s.linkEnd = e;
      } else if (e.type === 'corrupt') {
        const s = byRegion.get(e.region);
        if (s) {
          s.corrupt = true;
          listener!.closeConn(s.conn); // policy: a corrupt session is cut off
        }
      }
    }
  });
  listener = pump.listen(path);
  return {
    pump,
    listener,
    sessions,
    attaches,
    async close() {
      await until(() => pump.activeLinks === 0, 10_000, 'links to end');
      listener.close();
      for (const s of sessions.values()) {
        s.dest.destroy();
        s.region.close();
        s.gwBell.close();
        s.clBell.close();
      }
      pump.close();
    },
  };
}

test.serial('two processes: fds over SCM_RIGHTS, SO_PEERCRED identity, 8 MiB each way SHA-256 checked', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-attach-'));
  const path = join(dir, 'attach.sock');
  const down = prng(99, 8 << 20);
  const gw = gateway(path, () => down);
  try {
    const child = runChild([path, 'token-good', String(SLOT), String(8 << 20), '12345', 'echo']);
    const r = await child.done;
    t.is(r.code, 0, r.err);
    const res = JSON.parse(r.out.trim()) as { sentSha: string; recvSha: string; received: number; error: string | null; peerPid: number; peerUid: number };
    t.is(res.error, null);
    const s = gw.sessions.get('token-good')!;
    t.is(s.pid, child.pid, 'SO_PEERCRED pid is the child');
    t.is(s.uid, process.getuid!(), 'SO_PEERCRED uid');
    t.is(res.peerPid, process.pid, 'the client sees the gateway pid');
    t.is(res.received, down.length);
    t.is(res.recvSha, sha256(down), 'gateway -> client bytes intact');
    await until(() => s.destEnded, 10_000, 'destination EOF');
    t.is(sha256(...s.destBytes), res.sentSha, 'client -> gateway bytes intact');
    t.is(sha256(...s.destBytes), sha256(prng(12345, 8 << 20)));
    await until(() => s.linkEnd !== undefined, 10_000, 'link end');
    t.is(s.linkEnd!.reason, 'ok');
    // A refused attach gets the status and no fds.
    const err = await t.throwsAsync(attachClient(path, Buffer.from('refuse-me'), 5000));
    t.true(err instanceof AttachRefusedError);
    t.is((err as AttachRefusedError).status, 77);
    t.is(gw.attaches.length, 2);
  } finally {
    await gw.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('hostile client scribbling header and cursors: only its session ends with ERR_SOCKGATE_RING_CORRUPT', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-hostile-'));
  const path = join(dir, 'attach.sock');
  const down = prng(5, 16 << 20);
  const gw = gateway(path, () => down);
  try {
    const good = runChild([path, 'good', String(SLOT), String(16 << 20), '777', 'echo']);
    const bad = runChild([path, 'bad', String(SLOT), String(64 << 20), '778', 'hostile']);
    const [g, b] = await Promise.all([good.done, bad.done]);
    t.is(b.code, 0, b.err);
    t.is(g.code, 0, g.err);
    await until(() => gw.sessions.get('bad')?.linkEnd !== undefined, 10_000, 'the hostile link to end');
    const badS = gw.sessions.get('bad')!;
    t.true(badS.corrupt, 'corrupt event for the hostile region');
    t.is(badS.linkEnd!.reason, 'corrupt');
    t.is(badS.linkEnd!.code, 'ERR_SOCKGATE_RING_CORRUPT');
    t.true(badS.region.corrupt);
    const res = JSON.parse(g.out.trim()) as { sentSha: string; recvSha: string; error: string | null };
    t.is(res.error, null);
    t.is(res.recvSha, sha256(down), 'the good session received intact bytes');
    const goodS = gw.sessions.get('good')!;
    await until(() => goodS.destEnded, 10_000, 'good destination EOF');
    t.is(sha256(...goodS.destBytes), sha256(prng(777, 16 << 20)), 'the good session sent intact bytes');
    t.is(goodS.linkEnd?.reason, 'ok');
    t.false(goodS.region.corrupt);
  } finally {
    await gw.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
