/**
 * Live failover onto a new rdma connection, the SDK's side (native/RDMA.md
 * "Moving to a new RDMA connection"): the sockets a failed connection
 * suspended together try one fresh connection to the same gateway first, with
 * the MOVE flag and one of their resume tokens; each then resumes on a slot of
 * it (a RESUME BIND with its position; the gateway's BOUND says where to
 * resend from, checked natively). Bounded: a share of resume_ms and a few
 * attempts, so the tcp data port still has time for what this does not take.
 * RDMA may be usable after a QP fatal or a failed connection, but not after
 * the device went (`rdma link delete`): then the connect fails fast.
 */
import type { RdmaConnectOptions } from '../../native/index.js';
import { tracer } from '../../native/trace.js';
import type { NativeModule } from './native-optional.js';
import type { SuspendedSlot } from './rdma-resume.js';
import { within } from './client-slot-session.js';
import { SocketClosedError, type SockgateError } from '../../proto/errors.js';

const trace = tracer('rdma');

/** The rdma attempt may use this share of resume_ms: the tcp resume of what it does not take needs the rest. */
const MOVE_SHARE = 0.5;
/** Connection attempts within that time (a fault can take a first attempt down too). */
const MOVE_ATTEMPTS = 2;
/** Pause between attempts: long enough for a flapping port, short against resume_ms. */
const MOVE_RETRY_MS = 100;

/** What a move needs of a socket (RdmaSocket; structural, so rdma-client-session.ts can import this file). */
export interface MovableSocket {
  /** Nobody holds the socket any more (destroyed, and its descriptor not handed on): nothing to move. */
  readonly abandoned: boolean;
  readonly resumeToken?: Buffer | undefined;
}

/** What a move needs of a session (RdmaClientSession). */
export interface MoveSession<S extends MovableSocket> {
  readonly id: string;
  readonly ready: Promise<unknown>;
  start(n: NativeModule, opts: RdmaConnectOptions): void;
  close(err: SockgateError): void;
  adoptMoved(n: NativeModule, slot: number, sock: S, e: SuspendedSlot, timeoutMs: number): Promise<boolean>;
}

export interface Suspended<S extends MovableSocket> {
  sock: S;
  e: SuspendedSlot;
}

export interface MoveOptions<S extends MovableSocket> {
  n: NativeModule;
  /** A fresh session of the same client (registered with it, never offered). */
  spawn(): MoveSession<S>;
  /** The failed connection's options (address, rings, slots). */
  opts: RdmaConnectOptions;
  resumeMs: number;
  /** @internal Tests only: the move connection's native test hook. */
  hostile?: 2 | 3;
}

/** Move what it can onto a new rdma connection; resolves with the sockets it did not move (their descriptors untouched). */
export async function moveOnRdma<S extends MovableSocket>(batch: Array<Suspended<S>>, o: MoveOptions<S>): Promise<Array<Suspended<S>>> {
  const live = batch.filter((m) => !m.sock.abandoned && m.sock.resumeToken);
  if (live.length === 0) return batch;
  const deadline = Date.now() + Math.max(1, Math.floor(o.resumeMs * MOVE_SHARE));
  const session = await connect(live[0]!.sock.resumeToken!, o, deadline);
  if (!session) return batch;
  const slots = Math.min(o.opts.slots ?? 16, live.length);
  const taken = await Promise.all(live.map((m, i) => (i < slots ? session.adoptMoved(o.n, i, m.sock, m.e, Math.max(1, deadline - Date.now())) : Promise.resolve(false))));
  const left = batch.filter((m) => !live.includes(m) || !taken[live.indexOf(m)]);
  trace(`move session ${session.id}: ${taken.filter(Boolean).length} of ${batch.length} sockets moved to the new rdma connection`);
  // Nothing moved: the connection has no use.
  if (left.length === batch.length) session.close(new SocketClosedError(`rdma move session ${session.id} carried nothing`));
  return left;
}

/** A new connection with MOVE to the same gateway within the deadline, or undefined. */
async function connect<S extends MovableSocket>(token: Buffer, o: MoveOptions<S>, deadline: number): Promise<MoveSession<S> | undefined> {
  for (let attempt = 1; attempt <= MOVE_ATTEMPTS; attempt++) {
    const left = deadline - Date.now();
    if (left <= 0) return undefined;
    const s = o.spawn();
    try {
      const { hostile: _old, ...opts } = o.opts;
      s.start(o.n, { ...opts, token, resume: true, move: true, timeoutMs: left, ...(o.hostile ? { hostile: o.hostile } : {}) });
      await within(s.ready, left, undefined, `rdma failover: no new connection within ${left} ms`);
      return s;
    } catch (err) {
      trace(`move: attempt ${attempt} to ${o.opts.addr}:${o.opts.port} failed: ${(err as Error).message}`);
      s.close(new SocketClosedError('rdma move connection gave up'));
      if (attempt < MOVE_ATTEMPTS) await new Promise((r) => setTimeout(r, Math.min(MOVE_RETRY_MS, Math.max(0, deadline - Date.now()))));
    }
  }
  return undefined;
}
