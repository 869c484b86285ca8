/**
 * Live failover, the gateway's side (native/RDMA.md "Live failover"): sockets
 * whose RDMA connection failed wait here, with their host descriptor, the
 * agreed positions and the bytes the client has not consumed, for the
 * client's resumable attach on the tcp data port (proto/resume-wire.ts).
 *
 * The book keys every socket by its resume token from the moment its slot is
 * linked (`track`), so a resume that arrives while the gateway still thinks
 * the connection is up (the client saw the fault first) fails that connection
 * at once (its sockets suspend) and then proceeds. A suspended socket that is
 * not resumed within `resume_ms` ends with the connection's error, as without
 * failover.
 */
import type { Socket } from 'node:net';
import type { Pump } from '../native/index.js';
import type { Logger } from '../native/log.js';
import { tracer } from '../native/trace.js';
import { AttachStatus } from '../proto/wire.js';
import { encodeResumeReply, RESUME_BAD_POSITION, type ResumeRequestParse } from '../proto/resume-wire.js';
import type { RdmaEvent } from '../native/pump-hub.js';
import { TransportKind } from '../proto/gen/sockgate/v1/transport.js';
import type { NativeLinkEnd, NativeLinkEvents } from './data-channel.js';
import type { GatewaySocket } from './gateway-socket.js';
import { applyHostOption } from './host-option.js';
import type { MovedLink, RdmaSession, RdmaSlot, SlotLink } from './rdma-sessions.js';

export type { MovedLink } from './rdma-sessions.js';

const trace = tracer('rdma');

/** A resume for a socket whose connection still looks up waits this long for its suspension (the connection is failed at once). */
const SUSPEND_WAIT_MS = 5_000;
/** Resumes waiting for a suspension at once, gateway-wide (each holds a data connection). */
const MAX_WAITING = 256;

/** What a suspended socket hands over (native `suspended` event, positions as exact bigints). */
export interface Suspension {
  /** The host descriptor (owned by the book until resumed or expired). */
  hostFd: number;
  /** Bytes of the client's stream written to the host. */
  inPos: bigint;
  /** The client's last CONSUMED: our bytes before it are delivered. */
  outAcked: bigint;
  /** Bytes posted over RDMA (counted as sent already). */
  outSent: bigint;
  /** Bytes read from the host; `tail` holds [outAcked, outPos). */
  outPos: bigint;
  tail: Buffer;
  /** The connection's ERR_SOCKGATE_RDMA_* code. */
  cause: string;
}

/** What a socket gives the book when its slot is linked. */
export interface Resumable {
  socketId: string;
  /** Whose socket it is: a move connection (server/rdma-move.ts) becomes a session of this identity. */
  identity?: RdmaSession['identity'];
  /** The socket (known once suspended): a slot it moves to carries it (a later move records there). */
  readonly target?: GatewaySocket;
  events: NativeLinkEvents;
  /** Fail the socket's RDMA connection (the client resumes: it saw a fault we have not). */
  failConnection(): void;
  /** The socket continues through `link` (the tcp data port, or a slot of a new rdma connection), which now owns the host descriptor. */
  moved(link: MovedLink, cause: string, to: TransportKind): void;
  /** Not resumed in time: end the socket with its connection's error. */
  expired(end: NativeLinkEnd): void;
}

interface Entry {
  r: Resumable;
  suspension?: Suspension;
  timer?: NodeJS.Timeout;
  waiting?: { w: Waiter; timer: NodeJS.Timeout };
}

/** A resume (tcp data port or RESUME BIND) waiting for its socket: `take` once the position checks, else `refuse`. */
interface Waiter {
  position: bigint;
  take(e: Entry, s: Suspension, resend: Buffer): void;
  refuse(status: AttachStatus, detail: string): void;
}

export interface ResumeBookOptions {
  resumeMs: number;
  native: { dupFd(fd: number): number; closeFd(fd: number, reset?: boolean): void };
  pump: () => Pump;
  logger: Logger;
  highWatermark: number;
  /** Counts each move or failed resume by outcome and cause. */
  record(outcome: 'resumed' | 'expired' | 'refused', cause: string, to?: 'tcp' | 'rdma'): void;
}

export class ResumeBook {
  readonly #byToken = new Map<string, Entry>();
  #waiting = 0;

  constructor(private readonly o: ResumeBookOptions) {}

  get enabled(): boolean {
    return this.o.resumeMs > 0;
  }

  /** The socket's slot is linked: a resume may name it from now on. */
  track(token: Buffer, r: Resumable): void {
    this.#byToken.set(token.toString('hex'), { r });
  }

  /** The socket ended (or moved): forget it. */
  untrack(token: Buffer): void {
    const key = token.toString('hex');
    const e = this.#byToken.get(key);
    if (!e) return;
    this.#byToken.delete(key);
    clearTimeout(e.timer);
    if (e.waiting) {
      clearTimeout(e.waiting.timer);
      this.#waiting--;
      e.waiting.w.refuse(AttachStatus.WRONG_TOKEN, 'the socket ended');
    }
    if (e.suspension) this.o.native.closeFd(e.suspension.hostFd, true);
  }

  /** The connection failed under a tracked socket: hold it for `resume_ms`. False: not tracked (the caller closes the fd). */
  suspend(token: Buffer, s: Suspension): boolean {
    const e = this.#byToken.get(token.toString('hex'));
    if (!e || e.suspension) return false;
    e.suspension = s;
    e.timer = setTimeout(() => {
      this.#byToken.delete(token.toString('hex'));
      this.o.native.closeFd(s.hostFd, true);
      this.o.record('expired', s.cause);
      this.o.logger.warn({ socket: e.r.socketId, cause: s.cause, resumeMs: this.o.resumeMs }, 'rdma failover: not resumed in time (transports.rdma.resume_ms)');
      e.r.expired({ reason: 'error', errno: 0, code: s.cause });
    }, this.o.resumeMs);
    e.timer.unref();
    trace(`socket ${e.r.socketId} suspended (${s.cause}): in ${s.inPos}, out acked ${s.outAcked} sent ${s.outSent} read ${s.outPos}`);
    if (e.waiting) {
      const w = e.waiting;
      e.waiting = undefined;
      clearTimeout(w.timer);
      this.#waiting--;
      this.#take(token, e, w.w);
    }
    return true;
  }

  /** Whether a socket of that resume token is tracked; one whose connection still looks up is failed (its client saw the fault first). */
  movable(token: Buffer): Resumable | undefined {
    const e = this.enabled ? this.#byToken.get(token.toString('hex')) : undefined;
    if (e && !e.suspension && !e.waiting) e.r.failConnection();
    return e?.r;
  }

  /** Whose socket a resume token names, without touching it. */
  ownerOf(token: Buffer): Resumable['identity'] | undefined {
    return this.enabled ? this.#byToken.get(token.toString('hex'))?.r.identity : undefined;
  }

  /** A moved socket's RESUME BIND on a new rdma connection (server/rdma-move.ts): `take` gets the socket, its suspension and the bytes to send first. */
  acceptSlot(token: Buffer, position: bigint, w: { take(r: Resumable, s: Suspension, resend: Buffer): void; refuse(detail: string): void }): void {
    this.#admit(token, { position, take: (e, s, resend) => w.take(e.r, s, resend), refuse: (_status, detail) => w.refuse(detail) });
  }

  /** Counts a move or a failed one (the rdma target records its own outcomes). */
  record(outcome: 'resumed' | 'expired' | 'refused', cause: string, to?: 'tcp' | 'rdma'): void {
    this.o.record(outcome, cause, to);
  }

  /** A resume request on the data port (the tcp transport hands the connection over, paused). */
  accept(sock: Socket, req: Extract<ResumeRequestParse, { state: 'ok' }>): void {
    this.#admit(req.token, { position: req.position, take: (e, s, resend) => this.#resume(e, s, resend, sock, req), refuse: (status, detail) => this.#refuse(sock, status, detail) });
  }

  #admit(token: Buffer, w: Waiter): void {
    const refuse = (status: AttachStatus, detail: string) => {
      this.o.record('refused', AttachStatus[status] ?? String(status));
      trace(`resume refused: ${detail}`);
      w.refuse(status, detail);
    };
    const e = this.enabled ? this.#byToken.get(token.toString('hex')) : undefined;
    if (!e) return refuse(AttachStatus.WRONG_TOKEN, 'no socket to resume with that token');
    const waiter: Waiter = { ...w, refuse };
    if (e.suspension) return this.#take(token, e, waiter);
    if (e.waiting || this.#waiting >= MAX_WAITING) return refuse(AttachStatus.WRONG_TOKEN, 'a resume of that socket is already waiting');
    // The client gave the connection up (it saw the fault first): fail it here too; its sockets suspend.
    const timer = setTimeout(() => {
      if (e.waiting?.w !== waiter) return;
      e.waiting = undefined;
      this.#waiting--;
      refuse(AttachStatus.INTERNAL, 'the socket did not suspend in time');
    }, SUSPEND_WAIT_MS);
    timer.unref();
    e.waiting = { w: waiter, timer };
    this.#waiting++;
    e.r.failConnection();
  }

  /** The socket is suspended: check the position, then hand it to the waiter (the book forgets it). */
  #take(token: Buffer, e: Entry, w: Waiter): void {
    const s = e.suspension!;
    // The client consumed at least what it acknowledged and at most what we sent: anything else loses or doubles bytes.
    if (w.position < s.outAcked || w.position > s.outSent) {
      return w.refuse(RESUME_BAD_POSITION, `position ${w.position} outside [${s.outAcked}, ${s.outSent}]`);
    }
    this.#byToken.delete(token.toString('hex'));
    clearTimeout(e.timer);
    w.take(e, s, s.tail.subarray(Number(w.position - s.outAcked)));
  }

  #refuse(sock: Socket, status: AttachStatus, _detail: string): void {
    sock.on('error', () => {});
    sock.end(encodeResumeReply(status, 0n));
    setTimeout(() => sock.destroy(), 1000).unref();
  }

  #resume(e: Entry, s: Suspension, resend: Buffer, sock: Socket, req: Extract<ResumeRequestParse, { state: 'ok' }>): void {
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) {
      this.o.record('refused', 'descriptor');
      this.o.native.closeFd(s.hostFd, true);
      this.#refuse(sock, AttachStatus.INTERNAL, 'the data connection has no descriptor');
      e.r.expired({ reason: 'error', errno: 0, code: s.cause });
      return;
    }
    // Bytes the client sent after its request (its resent tail): for the host first.
    const toHost: Buffer[] = req.rest.length ? [Buffer.from(req.rest)] : [];
    sock.pause();
    for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) toHost.push(b);
    const reply = encodeResumeReply(AttachStatus.OK, s.inPos);
    // The reply and the bytes counted when RDMA posted them are not new host payload.
    let notFromHost = reply.length + Number(s.outSent - req.position);
    const c = this.o.native.dupFd(fd);
    sock.removeAllListeners();
    sock.on('error', () => {});
    sock.destroy();
    let link;
    try {
      link = this.o.pump().splice(c, s.hostFd, {
        toHostPrefix: toHost,
        toClientPrefix: [reply, resend],
        pipeBytes: this.o.highWatermark,
        onProgress: (toHostBytes, toClientBytes) => {
          const skip = Math.min(notFromHost, toClientBytes);
          notFromHost -= skip;
          e.r.events.progress(toHostBytes, toClientBytes - skip);
        },
        onHostEof: () => e.r.events.hostEnded?.(),
        onClientEof: () => e.r.events.clientEnded?.(),
      });
    } catch (err) {
      this.o.native.closeFd(c, true);
      this.o.native.closeFd(s.hostFd, true);
      this.o.record('refused', 'splice');
      this.o.logger.warn({ socket: e.r.socketId, err: (err as Error).message }, 'rdma failover: the data-port relay did not start');
      e.r.expired({ reason: 'error', errno: 0, code: s.cause });
      return;
    }
    this.o.record('resumed', s.cause, 'tcp');
    this.o.logger.info({ socket: e.r.socketId, cause: s.cause, in: String(s.inPos), out: String(req.position), resent: resend.length }, 'rdma failover: socket resumed on the tcp data port');
    const l = link;
    const ended: Promise<NativeLinkEnd> = l.ended.then((end) => ({ reason: end.reason, errno: end.errno, ...(end.code ? { code: end.code } : {}) }));
    e.r.moved(
      {
        ended,
        close: async () => {
          try {
            await l.close({ reset: true });
          } catch {
            // ended already
          }
          return ended;
        },
        shutdownHost: (read, write) => l.shutdownHost(read, write),
        setHostOption: (o) => applyHostOption(l, o, (err) => l.raw.closed || /ended/.test(String(err.message))),
      },
      s.cause,
      TransportKind.TRANSPORT_KIND_TCP,
    );
  }

  /** Gateway stopping: every held descriptor is closed, waiting resumes refused. */
  close(): void {
    for (const key of [...this.#byToken.keys()]) this.untrack(Buffer.from(key, 'hex'));
  }
}

type SuspendedEvent = Extract<RdmaEvent, { event: 'suspended' }>;

/**
 * The rdma transport's side of failover: a linked slot's socket is tracked
 * by its resume token; `suspended` parks it in the book (its link stays
 * pending, so the socket sees nothing); a resume moves the link onto the
 * data-port relay and records the move on the socket (status, metrics).
 */
export function failoverHooks(book: ResumeBook, native: { closeFd(fd: number, reset?: boolean): void }, failConnection: (s: RdmaSession) => void) {
  const tracked = new WeakMap<SlotLink, { token: Buffer; target?: GatewaySocket }>();
  return {
    track(s: RdmaSession, slot: RdmaSlot, link: SlotLink): void {
      const token = slot.resumeToken;
      if (!book.enabled || !token) return;
      const info: { token: Buffer; target?: GatewaySocket } = { token };
      tracked.set(link, info);
      book.track(token, {
        get socketId() {
          return info.target?.id ?? `slot ${slot.no} of session ${s.id}`;
        },
        identity: s.identity,
        get target() {
          return info.target;
        },
        events: link.events,
        failConnection: () => failConnection(s),
        moved: (m, cause, to) => {
          link.moved = m;
          const t = info.target;
          if (t) {
            t.moves.push({ from: t.transport, to, cause, atMs: Date.now() });
            t.transport = to;
          }
          void m.ended.then((end) => link.settle(end));
        },
        expired: (end) => link.settle(end),
      });
    },

    suspended(s: RdmaSession, e: SuspendedEvent): void {
      const slot = s.slots.get(e.slot);
      const link = slot?.link;
      const info = link && tracked.get(link);
      if (slot && link && info && !link.settled) {
        info.target ??= slot.target;
        link.suspended = true;
        const held = book.suspend(info.token, { hostFd: e.fd, inPos: e.inPos, outAcked: e.outAcked, outSent: e.outSent, outPos: e.outPos, tail: e.tail, cause: e.code });
        if (held) return;
        link.suspended = false;
      }
      trace(`session ${s.id}: slot ${e.slot} suspended but not resumable here: closing its descriptor`);
      native.closeFd(e.fd, true);
    },

    /** NativeLink.close() of a suspended (or moved) socket. */
    close(link: SlotLink): Promise<NativeLinkEnd> {
      if (link.moved) return link.moved.close();
      const info = tracked.get(link);
      if (info) book.untrack(info.token);
      link.settle({ reason: 'aborted', errno: 0 });
      return link.ended;
    },
  };
}
