/**
 * The SDK's move of suspended rdma sockets to a new rdma connection
 * (clients/sdk/rdma-move.ts), without verbs: stand-in sessions. Checks: the
 * connect carries MOVE, RESUME and the first socket's resume token, never the
 * failed connection's test hook; sockets the new connection takes are not
 * returned, the rest are (for the tcp resume, their descriptors untouched);
 * a connection that fails is tried MOVE_ATTEMPTS times, one that never comes
 * up is given up within half of resume_ms, then every socket is returned; a connection that carries
 * nothing is closed.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { RdmaConnectOptions } from '../../../native/index.js';
import type { NativeModule } from '../../../clients/sdk/native-optional.js';
import { moveOnRdma, type MovableSocket, type MoveSession } from '../../../clients/sdk/rdma-move.js';
import type { SuspendedSlot } from '../../../clients/sdk/rdma-resume.js';

const n = {} as NativeModule;
const OPTS: RdmaConnectOptions = { addr: '10.0.0.1', port: 4791, token: randomBytes(16), slots: 2, hostile: 5 } as RdmaConnectOptions;

function suspended(slot: number): { sock: MovableSocket; e: SuspendedSlot } {
  const e = { type: 'rdma', rdma: 1, event: 'suspended', slot, code: 'ERR_SOCKGATE_RDMA_QP_FATAL', fd: 100 + slot, inPos: 0n, outAcked: 0n, outSent: 0n, outPos: 0n, fdEof: false, peerEof: false, wrShut: false, tail: Buffer.alloc(0) } as SuspendedSlot;
  return { sock: { abandoned: false, resumeToken: randomBytes(16) }, e };
}

function session(o: { up: boolean; takes: (slot: number) => boolean }) {
  const log = { started: [] as RdmaConnectOptions[], adopted: [] as number[], closed: 0 };
  const s: MoveSession<MovableSocket> = {
    id: 'move-1',
    ready: o.up ? Promise.resolve() : new Promise(() => {}),
    start: (_n, opts) => void log.started.push(opts),
    close: () => void log.closed++,
    adoptMoved: async (_n, slot) => (log.adopted.push(slot), o.takes(slot)),
  };
  return { s, log };
}

test('the move connection asks MOVE and RESUME with the first resume token; what it takes stays, the rest goes to tcp', async (t) => {
  const batch = [suspended(0), suspended(1), suspended(2)];
  const { s, log } = session({ up: true, takes: (slot) => slot === 0 });
  const left = await moveOnRdma(batch, { n, spawn: () => s, opts: OPTS, resumeMs: 10_000 });
  t.is(log.started.length, 1);
  t.like(log.started[0], { addr: '10.0.0.1', port: 4791, resume: true, move: true });
  t.deepEqual(log.started[0]!.token, batch[0]!.sock.resumeToken);
  t.is(log.started[0]!.hostile, undefined, "the failed connection's test hook is not carried over");
  t.deepEqual(log.adopted, [0, 1], 'at most `slots` sockets are offered to it');
  t.deepEqual(left, [batch[1], batch[2]]);
  t.is(log.closed, 0);
});

test('a move connection that fails at once is tried twice; one that never comes up is given up within half of resume_ms; then every socket goes to tcp', async (t) => {
  const batch = [suspended(0)];
  let attempts = 0;
  const failing = session({ up: true, takes: () => true });
  failing.s.start = () => {
    attempts++;
    throw new Error('no device');
  };
  t.deepEqual(await moveOnRdma(batch, { n, spawn: () => failing.s, opts: OPTS, resumeMs: 10_000 }), batch);
  t.is(attempts, 2);
  t.is(failing.log.closed, 2);
  const sessions: Array<ReturnType<typeof session>> = [];
  const t0 = Date.now();
  const left = await moveOnRdma(batch, {
    n,
    spawn: () => {
      const x = session({ up: false, takes: () => true });
      sessions.push(x);
      return x.s;
    },
    opts: OPTS,
    resumeMs: 400,
  });
  t.deepEqual(left, batch);
  t.true(sessions.every((x) => x.log.closed === 1 && x.log.adopted.length === 0));
  t.true(Date.now() - t0 < 2_000, 'bounded by half of resume_ms (and the timers)');
});

test('a move connection that carries nothing is closed', async (t) => {
  const batch = [suspended(0)];
  const { s, log } = session({ up: true, takes: () => false });
  t.deepEqual(await moveOnRdma(batch, { n, spawn: () => s, opts: OPTS, resumeMs: 10_000 }), batch);
  t.is(log.closed, 1);
});
