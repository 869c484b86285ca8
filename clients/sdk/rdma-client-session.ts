/**
 * One rdma client session of the SDK (clients/sdk/attach-rdma.ts has the
 * protocol): its RC connection, its sockets by slot, their BIND/BOUND, and the
 * process-wide native pump every session shares (ref'd only while a
 * connection is being opened).
 */
import { randomBytes } from 'node:crypto';
import type { RawRdmaConn, RdmaConnectOptions } from '../../native/index.js';
import { PumpHub, type RdmaEvent } from '../../native/pump-hub.js';
import { isTracerEnabled, tracer } from '../../native/trace.js';
import { DeclineReason } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError, ConnectionResetError, SocketClosedError, SockgateError } from '../../proto/errors.js';
import { FdChannel } from './fd-channel.js';
import { Holds, PreissuedSlots, SharedPump, SlotBinds, within } from './client-slot-session.js';
import { native, type NativeModule } from './native-optional.js';
import { RdmaAttachError } from '../../proto/errors.js';
import { declineReasonOfRdmaFailure, rdmaEndError } from '../../proto/rdma-failures.js';
import type { SpliceLink } from '../../native/index.js';
import { resumeOnDataPort, type SuspendedSlot } from './rdma-resume.js';
import { moveOnRdma } from './rdma-move.js';

/** SOCKGATE_TRACE=rdma: the SDK's rdma sessions, slots and attach steps on stderr. */
const trace = tracer('rdma');
const tracing = isTracerEnabled('rdma');

/** Per-direction buffering of the JS side of a socket's socketpair. */
const CHANNEL_HIGH_WATERMARK = 1 << 20;

interface ClientHub {
  hub: PumpHub;
  /** Connections being opened: the pump keeps the process alive while there are some. */
  opening: Holds;
}

/** The pump every rdma connection of this process shares; closed once no connection is left. */
const clientHub = new SharedPump<ClientHub>(
  (h) => h.hub.close(),
  (err) => native?.nativeCode(err) === 'EBUSY',
);

function makeHub(n: NativeModule): ClientHub {
  // unrefWhenIdle: the pump never holds the process by itself (rdma connections are not links it tracks).
  const hub = new PumpHub(n, { unrefWhenIdle: true });
  return { hub, opening: new Holds(hub.pump, () => hub.closed) };
}

export function newSessionId(): string {
  return randomBytes(16).toString('base64url');
}

/**
 * A socket's data channel: a net.Socket over our end of the slot's socketpair.
 * An abort (`resetAndDestroy`, which the SDK socket uses on errors) closes the
 * slot both ways (CLOSE to the gateway, RST-like) instead of sending EOF.
 */
export class RdmaSocket extends FdChannel {
  /** Settles when the slot ended: undefined for a clean end, else why it failed. */
  readonly ended: Promise<SockgateError | undefined>;
  #resolveEnded!: (err: SockgateError | undefined) => void;
  #done = false;
  /** Live failover: the relay on the tcp data port this socket continues on. */
  #moved: SpliceLink | undefined;
  /** @internal openStream handed the descriptor on (a peer-routing gateway's native link holds a dup): destroyed here is not closed. */
  handedOver = false;
  /** Destroyed and not handed over: its bytes have no reader or writer left, so a failover does not move it. */
  get abandoned(): boolean {
    return this.destroyed && !this.handedOver;
  }

  constructor(
    fd: number,
    public slot: number,
    public sessionId: string,
    private abortSlot: () => void,
    label: string,
    /** Live failover: the token a resume names this socket by (undefined: not resumable). */
    readonly resumeToken?: Buffer,
  ) {
    super({ fd, highWaterMark: CHANNEL_HIGH_WATERMARK, label });
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
  }

  /** @internal The gateway half-closed (its EOF came after its last byte): our EOF is genuine. */
  peerEnded(): void {
    this.settle();
  }

  /** @internal The slot ended (clean when `err` is undefined). */
  slotEnded(err: SockgateError | undefined): void {
    if (this.#done) return;
    this.#done = true;
    this.settle(err);
    this.#resolveEnded(err);
  }

  /** @internal Live failover: the socket continues on `link` (emits `moved`: { from, to, cause, atMs }). */
  movedTo(link: SpliceLink, cause: string): void {
    this.#moved = link;
    this.emit('moved', { from: 'rdma', to: 'tcp', cause, atMs: Date.now() });
  }

  /** @internal Live failover: the socket continues on slot `slot` of a new rdma connection (session `sessionId`). */
  movedToRdma(sessionId: string, slot: number, abortSlot: () => void, cause: string): void {
    this.sessionId = sessionId;
    this.slot = slot;
    this.abortSlot = abortSlot;
    this.#moved = undefined;
    this.emit('moved', { from: 'rdma', to: 'rdma', cause, atMs: Date.now() });
  }

  /** Abort: the slot is closed both ways (the gateway resets the host socket). */
  override resetAndDestroy(): this {
    if (!this.destroyed && !this.#done) {
      try {
        if (this.#moved) void this.#moved.close({ reset: true }).catch(() => {});
        else this.abortSlot();
      } catch {
        // the slot or connection is already gone
      }
    }
    this.destroy();
    return this;
  }
}

export type SessionState = 'waiting' | 'connecting' | 'established' | 'closed';

/** One session: its RC connection (once opened) and its sockets by slot. */
export class RdmaClientSession {
  state: SessionState = 'waiting';
  conn: RawRdmaConn | undefined;
  /** Sockets by slot, until their slot ended. */
  readonly slots = new Map<number, RdmaSocket>();
  /** Slots the gateway pre-issued to this session (made with the first answer naming its slot count). */
  preissued: PreissuedSlots | undefined;
  /** Resolves once the connection is established; rejects if it failed, or never started in time. */
  readonly ready: Promise<RawRdmaConn>;
  #resolveReady!: (c: RawRdmaConn) => void;
  #rejectReady!: (err: Error) => void;
  /** Why the connection ended, once it did. */
  closedError: SockgateError | undefined;
  #hub: ClientHub | undefined;
  #waitTimer: NodeJS.Timeout | undefined;
  /** Slots linked with BIND whose BOUND (or refusal) has not come yet. */
  readonly #binds = new SlotBinds();
  /** Live failover: the gateway's data port and how long it waits for a resume (RdmaAttach.resume_*); undefined = none. */
  resume: { host: string; port: number; ms: number } | undefined;
  /** A connection opened for moved sockets only (MOVE): closed once the last of them ended. */
  moveOnly = false;
  /** @internal Tests only: the native test hook of a move connection. */
  moveHostile: 2 | 3 | undefined;
  /** The options the connection was opened with (a move connection to the same gateway reuses them). */
  connectOpts: RdmaConnectOptions | undefined;
  /** Live failover: sockets suspended in this batch of events, moved together (one new connection for all). */
  #toMove: Array<{ sock: RdmaSocket; e: SuspendedSlot }> = [];
  /** Moved sockets whose RESUME BIND awaits its BOUND (they join `slots` with it). */
  readonly #moving = new Map<number, RdmaSocket>();

  constructor(
    readonly id: string,
    private readonly onGone: (s: RdmaClientSession) => void,
    waitMs: number,
    /** Live failover onto a new rdma connection: a fresh session of the same client (undefined: tcp only). */
    readonly spawn?: () => RdmaClientSession,
  ) {
    this.ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody awaits it when no socket does; a rejection is then nobody's to report.
    this.ready.catch(() => {});
    // A session a later socket named but whose first socket never opened it.
    this.#waitTimer = setTimeout(() => {
      if (this.state === 'waiting') this.#end(new RdmaAttachError(`rdma session ${this.id}: the connection was not opened within ${waitMs} ms`, DeclineReason.DECLINE_REASON_CONNECT_FAILED));
    }, waitMs);
    this.#waitTimer.unref();
  }

  /** Open the connection (the session's first socket). */
  start(n: NativeModule, opts: RdmaConnectOptions): void {
    if (this.state !== 'waiting') throw new AttachFailedError(`rdma session ${this.id} is already ${this.state}`);
    clearTimeout(this.#waitTimer);
    const h = clientHub.acquire(() => makeHub(n));
    let conn: RawRdmaConn;
    try {
      conn = n.rdma.connect!(h.hub.pump.raw, opts);
    } catch (err) {
      clientHub.release();
      const e = n.translateError(err) as Error;
      const reason = n.nativeCode(e) === 'ENODEV' ? DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE : DeclineReason.DECLINE_REASON_CONNECT_FAILED;
      const failure = new RdmaAttachError(`rdma connect to ${opts.addr}:${opts.port} failed: ${e.message}`, reason, { cause: e });
      this.#end(failure);
      throw failure;
    }
    this.#hub = h;
    this.conn = conn;
    this.connectOpts = opts;
    this.moveOnly = opts.move === true;
    h.opening.add();
    this.state = 'connecting';
    h.hub.onRdma(conn.id, (e) => this.#onEvent(e, opts.addr, opts.port));
  }

  #onEvent(e: RdmaEvent, addr: string, port: number): void {
    // Positions are bigints (suspended, bound), a tail is payload: neither goes into JSON.
    if (tracing && e.event !== 'progress') trace(`session ${this.id}: ${e.event} ${JSON.stringify({ ...e, ...('tail' in e ? { tail: e.tail.length } : {}) }, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`);
    switch (e.event) {
      case 'established':
        if (this.state !== 'connecting') return;
        this.state = 'established';
        this.#hub?.opening.drop();
        this.#resolveReady(this.conn!);
        return;
      case 'failed': {
        const reason = declineReasonOfRdmaFailure(e.code, e.errno);
        this.#end(new RdmaAttachError(`rdma connect to ${addr}:${port} failed: ${e.code}${e.message ? ` (${e.message})` : ''}`, reason));
        return;
      }
      case 'closed':
        this.#end(e.code === 'ok' ? new SocketClosedError(`rdma session ${this.id} closed`) : rdmaEndError(e.code, e.errno, `rdma session ${this.id} with ${addr}:${port} ended${e.message ? ` (${e.message})` : ''}`));
        return;
      case 'peerEof':
        this.slots.get(e.slot)?.peerEnded();
        return;
      case 'bound': {
        // A moved socket is this session's from its BOUND on (its later events come in the same batch).
        const m = this.#moving.get(e.slot);
        if (m) {
          this.#moving.delete(e.slot);
          this.slots.set(e.slot, m);
        }
        this.#binds.settle(e.slot);
        return;
      }
      case 'suspended':
        return this.#suspended(e);
      case 'slotEnd': {
        // A move connection pins its rings for its moved sockets only.
        if (this.moveOnly) queueMicrotask(() => this.slots.size === 0 && this.#moving.size === 0 && this.close(new SocketClosedError(`rdma move session ${this.id}: its moved sockets ended`)));
        // reset: the gateway answered our BIND with CLOSE. Otherwise our own abort, or the connection went down.
        if (
          this.#binds.settle(
            e.slot,
            e.reason === 'reset'
              ? new RdmaAttachError(`rdma slot ${e.slot} of session ${this.id}: the gateway refused the bind`, DeclineReason.DECLINE_REASON_PEER_DECLINED)
              : new RdmaAttachError(`rdma slot ${e.slot} of session ${this.id} ended before the gateway answered its bind (${e.reason}${e.code ? ` ${e.code}` : ''})`, DeclineReason.DECLINE_REASON_CONNECT_FAILED),
          )
        ) {
          // Nobody holds that socket yet (the attach that waits destroys it): no error to emit.
          const unbound = this.slots.get(e.slot);
          this.slots.delete(e.slot);
          unbound?.slotEnded(undefined);
          return;
        }
        const sock = this.slots.get(e.slot);
        if (!sock) return;
        this.slots.delete(e.slot);
        const what = `${sock.label} (rdma slot ${e.slot})`;
        if (e.reason === 'ok') return sock.slotEnded(undefined);
        if (e.reason === 'aborted') return sock.slotEnded(new SocketClosedError(`${what} was closed`));
        if (e.code.startsWith('ERR_SOCKGATE_')) return sock.slotEnded(rdmaEndError(e.code, e.errno, what));
        // A plain errno (ECONNABORTED when the connection goes down): if the connection's own end
        // comes in the same batch of events, its code says more. Decide once the batch is through.
        queueMicrotask(() => {
          if (this.closedError) return sock.slotEnded(this.closedError);
          sock.slotEnded(e.reason === 'reset' && (!e.code || e.code === 'ECONNRESET') ? new ConnectionResetError(`${what} was reset by the gateway`) : rdmaEndError(e.code, e.errno, what));
        });
        return;
      }
      default:
        // progress, fdEof: nothing to do here; request/bind are the gateway's.
        return;
    }
  }

  /** Live failover: the connection failed under an open socket; move it (with the others of this batch), or end it with the connection's error. */
  #suspended(e: SuspendedSlot): void {
    const n = native!;
    const sock = this.slots.get(e.slot);
    if (!sock || !this.resume || !sock.resumeToken || sock.abandoned) {
      n.closeFd(e.fd, true);
      return;
    }
    // The slot's slotEnd and the connection's end no longer concern this socket.
    this.slots.delete(e.slot);
    this.#toMove.push({ sock, e });
    // Every slot suspends in the same round of the I/O thread: one move for all of them.
    if (this.#toMove.length === 1) setImmediate(() => this.#move());
  }

  /** A new rdma connection to the same gateway first (bounded), then the tcp data port for what it did not take. */
  #move(): void {
    const batch = this.#toMove.splice(0);
    const r = this.resume!;
    // The pump stays up, and holds the process, for the move (nothing else may until the new path runs).
    const h = clientHub.acquire(() => makeHub(native!));
    h.opening.add();
    const opts = this.connectOpts;
    const tryRdma = this.spawn && opts ? moveOnRdma(batch, { n: native!, spawn: this.spawn, opts, resumeMs: r.ms, ...(this.moveHostile ? { hostile: this.moveHostile } : {}) }) : Promise.resolve(batch);
    void tryRdma
      .catch(() => batch)
      .then((left) => {
        for (const m of left) this.#resumeTcp(m.sock, m.e);
        h.opening.drop();
        clientHub.release();
      });
  }

  /** Resume one suspended socket on the gateway's tcp data port, or end it with the connection's error. */
  #resumeTcp(sock: RdmaSocket, e: SuspendedSlot): void {
    const n = native!;
    const r = this.resume!;
    const what = `${sock.label} (rdma slot ${e.slot})`;
    if (sock.abandoned) return n.closeFd(e.fd, true);
    trace(`session ${this.id}: ${what} suspended (${e.code}): resuming on ${r.host}:${r.port}`);
    const h = clientHub.acquire(() => makeHub(n));
    resumeOnDataPort({ host: r.host, port: r.port, token: sock.resumeToken! }, e, { pump: h.hub.pump, native: n, timeoutMs: r.ms, pipeBytes: CHANNEL_HIGH_WATERMARK, onPeerEof: () => sock.peerEnded() }).then(
      (link) => {
        trace(`session ${this.id}: ${what} resumed on tcp`);
        sock.movedTo(link, e.code);
        void link.ended.then((end) => {
          clientHub.release();
          sock.slotEnded(end.reason === 'ok' ? undefined : end.code ? rdmaEndError(end.code, end.errno, what) : new ConnectionResetError(`${what} was reset after its failover (${end.reason})`));
        });
      },
      (err: Error) => {
        trace(`session ${this.id}: ${what} not resumed: ${err.message}`);
        n.closeFd(e.fd, true);
        clientHub.release();
        sock.slotEnded(rdmaEndError(e.code, 0, `${what}, not resumed on the data port (${err.message})`));
      },
    );
  }

  /**
   * Live failover onto this (move) connection: slot `slot` resumes `sock`,
   * suspended as `e`. True once the gateway's BOUND came (its position checked
   * natively, our tail sent from there; `e.fd` is closed, the connection has
   * its duplicate); false, `e.fd` still the caller's and nothing read from or
   * written to it, when refused or not answered within `timeoutMs`.
   */
  async adoptMoved(n: NativeModule, slot: number, sock: RdmaSocket, e: SuspendedSlot, timeoutMs: number): Promise<boolean> {
    const conn = this.conn;
    if (this.state !== 'established' || !conn || this.slots.has(slot) || this.#moving.has(slot)) return false;
    const fd = n.dupFd(e.fd);
    try {
      conn.link(slot, fd, sock.resumeToken, { position: e.inPos, acked: e.outAcked, sent: e.outSent, bytes: e.tail });
    } catch {
      n.closeFd(fd);
      return false;
    }
    this.#moving.set(slot, sock);
    try {
      await within(this.#binds.expect(slot), timeoutMs, undefined, `rdma failover: no answer to the resume of slot ${slot} within ${timeoutMs} ms`);
    } catch (err) {
      this.#moving.delete(slot);
      if (this.slots.get(slot) === sock) this.slots.delete(slot);
      // Unanswered: give the slot up (its duplicate closes; a late BOUND is ignored).
      try {
        conn.closeSlot(slot, true);
      } catch {
        // the connection is gone
      }
      trace(`session ${this.id}: slot ${slot} not taken for ${sock.label}: ${(err as Error).message}`);
      return false;
    }
    n.closeFd(e.fd);
    sock.movedToRdma(this.id, slot, () => conn.closeSlot(slot, true), e.code);
    return true;
  }

  /** Wait until slot `slot` is free here (the gateway may reuse a slot whose end event we have not yet seen). */
  async slotFree(slot: number, timeoutMs: number): Promise<void> {
    const prior = this.slots.get(slot);
    if (!prior) return;
    trace(`session ${this.id}: slot ${slot} still held here, waiting for its end`);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([prior.ended, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    if (this.slots.get(slot) === prior) throw new AttachFailedError(`rdma slot ${slot} of session ${this.id} is still in use here`);
  }

  /**
   * Link a slot to a new socketpair; with `token`, BIND it (later sockets:
   * `bound` then settles with the gateway's answer, BOUND or its CLOSE, which
   * rejects with PEER_DECLINED). The connection owns our end from here on.
   */
  link(n: NativeModule, slot: number, token: Uint8Array | undefined, label: string, resumeToken?: Buffer): { sock: RdmaSocket; bound: Promise<void> } {
    const conn = this.conn;
    if (this.state !== 'established' || !conn) throw new AttachFailedError(`rdma session ${this.id} is ${this.state}`);
    if (this.slots.has(slot)) throw new AttachFailedError(`rdma slot ${slot} of session ${this.id} is already in use here`);
    const [a, b] = n.socketpair();
    let sock: RdmaSocket;
    try {
      sock = new RdmaSocket(b, slot, this.id, () => conn.closeSlot(slot, true), label, resumeToken);
    } catch (err) {
      n.closeFd(a);
      n.closeFd(b);
      throw err;
    }
    try {
      if (token) conn.link(slot, a, token);
      else conn.link(slot, a);
    } catch (err) {
      n.closeFd(a);
      sock.destroy();
      throw new AttachFailedError(`rdma link of slot ${slot} failed: ${(n.translateError(err) as Error).message}`, { cause: err });
    }
    this.slots.set(slot, sock);
    if (!token) return { sock, bound: Promise.resolve() };
    // A refusal after the attach gave up waiting is nobody's to report (expect() catches it).
    return { sock, bound: this.#binds.expect(slot) };
  }

  /**
   * Give back a pre-issued slot whose Connect's outcome is unknown: a CLOSE on
   * it (our end linked for that only, then aborted), which frees it on the
   * gateway, or resets the host socket it linked there. A free slot closed
   * here sends nothing, hence the link.
   */
  giveBack(n: NativeModule, slot: number): void {
    if (this.state !== 'established' || this.slots.has(slot)) return;
    try {
      const { sock } = this.link(n, slot, undefined, `given-back slot ${slot}`);
      sock.on('error', () => {});
      sock.resetAndDestroy();
    } catch {
      // the connection is going: its slots go with it
    }
  }

  /** Release a slot the gateway linked for a socket that will not use it (an aborted first attach). */
  abandon(slot: number): void {
    void this.ready.then(
      (conn) => {
        try {
          conn.closeSlot(slot, true);
        } catch {
          // gone already
        }
      },
      () => {},
    );
  }

  /** Disconnect (every slot ends, then `closed`). */
  close(err: SockgateError): void {
    if (this.state === 'closed') return;
    if (this.conn && (this.state === 'established' || this.state === 'connecting')) {
      try {
        this.conn.close();
        // The `closed` event finishes the job; say why meanwhile.
        this.closedError ??= err;
        return;
      } catch {
        // the native side is gone already: finish here
      }
    }
    this.#end(err);
  }

  /** The connection ended (or never came up): fail what waits and every socket, let go of the pump. */
  #end(err: SockgateError): void {
    if (this.state === 'closed') return;
    const wasOpening = this.state === 'connecting';
    this.state = 'closed';
    this.closedError = this.closedError && !(err instanceof SocketClosedError) ? err : (this.closedError ?? err);
    clearTimeout(this.#waitTimer);
    this.#rejectReady(err);
    const unbound = new Set<number>();
    this.#binds.failAll((slot) => (unbound.add(slot), err));
    this.onGone(this);
    const socks = [...this.slots.values()];
    this.slots.clear();
    // A socket still waiting for BOUND was never handed out: its attach fails instead (no error event nobody listens to).
    for (const s of socks) s.slotEnded(unbound.has(s.slot) ? undefined : this.closedError);
    const h = this.#hub;
    if (h && this.conn) {
      this.#hub = undefined;
      h.hub.offRdma(this.conn.id);
      if (wasOpening) h.opening.drop();
      clientHub.release();
    }
  }
}
