/**
 * The `rdma` data plane: clients on other hosts with an RDMA device move
 * payload over one reliable-connected queue pair per client session; the
 * native connection pumps each socket's slot to and from its host socket on
 * the I/O thread, so no payload byte enters the gateway's JS heap
 * (native/RDMA.md has the protocol).
 *
 * Sessions. The client picks a session id and offers it with every socket
 * (RdmaOffer.session_id); negotiation reserves a slot of that session and
 * answers RdmaAttach{address, port, session_id, slot, new_session, slots}:
 *
 * - new_session: the session has no connection and no socket is opening one.
 *   The client connects to the listener with the socket's attach token in the
 *   connect private data (its first SHORT_TOKEN_BYTES: rdma_cm has room for
 *   no more). The gateway redeems it, finds the socket's reservation on a
 *   pending session, accepts the connection, and links the slot once the
 *   connection is established.
 * - otherwise: the connection exists (or an earlier socket is opening it); the
 *   client links its slot with the token, which reaches the gateway as a
 *   `bind` event; the gateway redeems it, checks that the socket reserved that
 *   very slot of that session, and links the slot (the native side answers
 *   BOUND, which completes the client's attach) or closes it (CLOSE: the
 *   client's attach fails with PEER_DECLINED and it negotiates tcp).
 *
 * A session belongs to the identity that created it: another identity naming
 * the same id gets a session of its own under a fresh id. Which reservation a
 * socket holds is learnt when the negotiator issues the socket's token
 * (Transport.issued), because the connect request carries nothing but the token.
 *
 * Slot lifecycle: reserved (negotiated; expires with the token plus a grace)
 * -> linking (the first socket, waiting for `established`) -> open (linked)
 * -> slotEnd (free again). A slot the gateway refuses is closed (CLOSE to the
 * client) and stays taken until its slotEnd.
 *
 * A connection that fails (keepalive timeout, device removal, port down, QP
 * error, protocol violation, disconnect) ends every socket on it with the
 * event's code (ERR_SOCKGATE_RDMA_*), logged and counted by code.
 */
import { randomBytes } from 'node:crypto';
import type { Counter, Meter } from '@opentelemetry/api';
import type { HostSockopt, RawRdmaConn, RawRdmaListener, RdmaRegionOptions } from '../native/index.js';
import { DeclineReason, TransportKind, type Accepted, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { AttachTokenError, ATTACH_TOKEN_BYTES, SHORT_TOKEN_BYTES, type AttachRegistry } from './attach.js';
import type { Config } from './config.js';
import { NativeError, SocketClosedError } from '../proto/errors.js';
import { applyHostOption } from './host-option.js';
import { RateLimitedWarn, type Logger } from '../native/log.js';
import type { Identity } from './policy.js';
import type { PumpHub, RdmaEvent } from '../native/pump-hub.js';
import { SESSION_ID_RE } from '../proto/shm-wire.js';
import { StreamSocket, type GatewaySocket } from './socket-table.js';
import type { GatewayMetrics } from './telemetry.js';
import type { HostOption, NativeDataChannel, NativeLink, NativeLinkEnd, NativeLinkEvents, OfferContext, OfferOutcome, Transport } from './transport.js';
import { tracer } from '../native/trace.js';

const trace = tracer('rdma');

type NativeModule = typeof import('../native/index.js');
export type RdmaConfig = Config['transports']['rdma'];

/** The end code of a connection (and of the slots it cut off) whose peer went away. */
const DISCONNECTED = 'ERR_SOCKGATE_RDMA_DISCONNECTED';
/** A reserved slot outlives its token by this much (a connect or bind may be in flight when the token expires). */
const RESERVATION_GRACE_MS = 2_000;
/** How long teardown waits for a slot's or a connection's end event before giving up on it. */
const END_WAIT_MS = 5_000;
/** Client input echoed in a decline detail is cut to this length. */
const MAX_ECHO = 64;

/** The rdma plane's own metrics, declared once (served with the gateway's). */
export const RDMA_METRICS = {
  refused: { name: 'sockgate.rdma.refusals', description: 'rdma connection requests and binds refused, by reason', unit: '{attach}' },
  failures: { name: 'sockgate.rdma.connection_failures', description: 'rdma connections that failed, by code', unit: '{connection}' },
  sessions: { name: 'sockgate.rdma.sessions', description: 'rdma client sessions with a connection (connecting or established)', unit: '{session}' },
} as const;

export type RefusalReason = 'token' | 'no_session' | 'not_waiting' | 'busy' | 'resource' | 'shutting_down';

function echo(s: string): string {
  return s.length > MAX_ECHO ? `${JSON.stringify(s.slice(0, MAX_ECHO))}...` : JSON.stringify(s);
}

// ---- sessions and reservations (no native state: unit-tested on any host) ----

/** What a running slot link reports to, and how its end is settled. */
interface SlotLink {
  readonly events: NativeLinkEvents;
  readonly ended: Promise<NativeLinkEnd>;
  settled: boolean;
  /** closeSlot() was asked for. */
  closing: boolean;
  settle(end: NativeLinkEnd): void;
}

/** One socket slot of a session. */
export class RdmaSlot {
  /**
   * reserved: negotiated, waiting for its connect request or bind;
   * linking: the session's first socket, waiting for `established`;
   * open: linked natively; closing: closeSlot() sent, waiting for slotEnd.
   */
  state: 'reserved' | 'linking' | 'open' | 'closing' = 'reserved';
  /** Expiry of a reservation. */
  timer: NodeJS.Timeout | undefined;
  /** The socket the reservation was issued to (Transport.issued). */
  socket: GatewaySocket | undefined;
  /** The socket riding (or about to ride) the slot. */
  target: StreamSocket | undefined;
  link: SlotLink | undefined;
  constructor(
    readonly session: RdmaSession,
    readonly no: number,
  ) {}
}

/** A client session: at most one RC connection, and its slots. */
export class RdmaSession {
  /** pending: no connection yet; connecting: accepted, not established; live: established; closed: forgotten. */
  state: 'pending' | 'connecting' | 'live' | 'closed' = 'pending';
  /** Slots by number (0..slots-1); absent = free. */
  readonly slots = new Map<number, RdmaSlot>();
  /** The reservation whose client was told new_session (it opens the connection). */
  connector: RdmaSlot | undefined;
  conn: RawRdmaConn | undefined;
  /** The connecting peer, as rdma_cm reports it. */
  peer = '';
  /** Establishment deadline. */
  timer: NodeJS.Timeout | undefined;
  /** Where the next free-slot search starts. */
  nextSlot = 0;
  /** BINDs that arrived before `established` (a receive completion can beat the cm event), handled after it. */
  early: Array<{ slot: number; token: Buffer }> = [];
  /** A socket's slot was ended by the peer's disconnect (rather than having ended before it). */
  cutOff = false;
  /** Where offers naming this session go once all its slots are busy: a further session (connection) of the same client. */
  overflow: RdmaSession | undefined;
  /** Settles once the session is forgotten. */
  readonly ended: Promise<void>;
  #resolveEnded!: () => void;
  constructor(
    readonly id: string,
    readonly identity: Identity,
  ) {
    this.ended = new Promise((r) => (this.#resolveEnded = r));
  }
  /** @internal */
  markEnded(): void {
    this.#resolveEnded();
  }
}

export interface RdmaSessionLimits {
  /** Slots per connection. */
  slots: number;
  maxSessions: number;
  maxSessionsPerIdentity: number;
  /** How long a reservation waits for its connect request or bind. */
  reservationMs: number;
}

export type Reservation =
  | { ok: true; session: RdmaSession; slot: RdmaSlot; newSession: boolean }
  | { ok: false; reason: DeclineReason; detail: string };

/**
 * The session table: ids, owners, slot reservations and their expiry, and the
 * limits. Pure bookkeeping; the transport owns connections and links.
 */
export class RdmaSessions {
  /** Every session (pending, connecting, live) by id; ids are unique across identities. */
  readonly byId = new Map<string, RdmaSession>();
  readonly #perIdentity = new Map<string, number>();
  /** The reservation each issued socket holds. */
  readonly #bySocket = new WeakMap<GatewaySocket, RdmaSlot>();

  constructor(private readonly limits: RdmaSessionLimits) {}

  get size(): number {
    return this.byId.size;
  }

  /** Sessions `identity` holds. */
  countOf(identity: string): number {
    return this.#perIdentity.get(identity) ?? 0;
  }

  /**
   * Reserve a slot of session `offered` for `identity` (creating the session
   * if it has none by that id). When every slot of it is busy, the slot comes
   * from its overflow session: a further session of the same identity under a
   * fresh id (new_session, so the client opens a second connection), created
   * while max_sessions and max_sessions_per_identity allow.
   */
  reserve(identity: Identity, offered: string): Reservation {
    const decline = (reason: DeclineReason, detail: string): Reservation => ({ ok: false, reason, detail });
    if (offered === '') return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, 'the rdma offer names no session (RdmaOffer.session_id: 8..64 of [A-Za-z0-9_-], picked by the client)');
    if (!SESSION_ID_RE.test(offered)) return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, `session id ${echo(offered)} is malformed (8..64 of [A-Za-z0-9_-])`);
    const who = identity.name;
    let session = this.byId.get(offered);
    let id = offered;
    if (session && session.identity.name !== who) {
      // Someone else's session: never share it; this identity gets one of its own.
      session = undefined;
      do id = randomBytes(12).toString('base64url');
      while (this.byId.has(id));
    }
    let created = false;
    if (!session) {
      const full = this.#noRoom(who);
      if (full) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, full);
      session = new RdmaSession(id, identity);
      created = true;
    } else if (session.slots.size >= this.limits.slots) {
      // Busy: the first of its overflow chain with a free slot, else a new session at the chain's end.
      const named = session;
      let last = session;
      while (last.overflow && last.overflow.state !== 'closed' && last.slots.size >= this.limits.slots) last = last.overflow;
      if (last.slots.size < this.limits.slots) {
        session = last;
      } else {
        const full = this.#noRoom(who);
        if (full) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, `every one of the ${this.limits.slots} slots of rdma session ${named.id}${named !== last ? ' and of its overflow sessions' : ''} is busy (transports.rdma.slots), and ${full}`);
        do id = randomBytes(12).toString('base64url');
        while (this.byId.has(id));
        session = new RdmaSession(id, identity);
        last.overflow = session;
        created = true;
      }
    }
    const no = this.#freeSlot(session);
    if (no < 0) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, `every one of the ${this.limits.slots} slots of rdma session ${session.id} is busy (transports.rdma.slots)`);
    if (created) {
      this.byId.set(session.id, session);
      this.#perIdentity.set(who, this.countOf(who) + 1);
      trace(`${who}: new pending session ${session.id}${id !== offered ? ` (for ${echo(offered)}: another identity's, or all its slots busy)` : ''}`);
    }
    const slot = new RdmaSlot(session, no);
    session.slots.set(no, slot);
    const newSession = session.state === 'pending' && session.connector === undefined;
    if (newSession) session.connector = slot;
    slot.timer = setTimeout(() => {
      if (slot.state !== 'reserved') return;
      trace(`session ${session.id}: reservation of slot ${no} expired`);
      this.free(slot);
    }, this.limits.reservationMs);
    slot.timer.unref();
    return { ok: true, session, slot, newSession };
  }

  /** Why `who` may not have another session (max_sessions, max_sessions_per_identity), or '' if it may. */
  #noRoom(who: string): string {
    const { maxSessions, maxSessionsPerIdentity } = this.limits;
    if (this.byId.size >= maxSessions) return `the gateway holds ${this.byId.size} of ${maxSessions} rdma sessions (transports.rdma.max_sessions)`;
    if (this.countOf(who) >= maxSessionsPerIdentity) {
      return `identity "${who}" holds ${this.countOf(who)} of ${maxSessionsPerIdentity} rdma sessions (transports.rdma.max_sessions_per_identity)`;
    }
    return '';
  }

  /** Tie the reservation (session id, slot) to the socket its token was issued to. False if there is none. */
  issued(socket: GatewaySocket, sessionId: string, slotNo: number): boolean {
    const slot = this.byId.get(sessionId)?.slots.get(slotNo);
    if (!slot || slot.state !== 'reserved' || slot.socket !== undefined || slot.session.identity.name !== socket.identity.name) return false;
    // A socket that negotiates rdma again (its earlier attach failed) gives up its earlier reservation.
    const earlier = this.#bySocket.get(socket);
    if (earlier && earlier.state === 'reserved') this.free(earlier);
    else if (earlier) this.untie(earlier);
    slot.socket = socket;
    this.#bySocket.set(socket, slot);
    return true;
  }

  /** Release a reservation no socket was issued for (its host connect failed), so the session's connector is free at once. */
  abandon(sessionId: string, slotNo: number): void {
    const slot = this.byId.get(sessionId)?.slots.get(slotNo);
    if (slot && slot.state === 'reserved' && slot.socket === undefined) this.free(slot);
  }

  /** The reservation `socket` holds, if any. */
  reservationOf(socket: GatewaySocket): RdmaSlot | undefined {
    const slot = this.#bySocket.get(socket);
    return slot && slot.session.slots.get(slot.no) === slot && slot.session.state !== 'closed' ? slot : undefined;
  }

  /** Take a slot number that is not reserved but must not be reused until its slotEnd (a refused bind). */
  hold(session: RdmaSession, no: number): RdmaSlot | undefined {
    if (no < 0 || no >= this.limits.slots || session.slots.has(no)) return session.slots.get(no);
    const slot = new RdmaSlot(session, no);
    slot.state = 'closing';
    session.slots.set(no, slot);
    return slot;
  }

  /** Free a slot. A pending session left without reservations is forgotten. */
  free(slot: RdmaSlot): void {
    const s = slot.session;
    clearTimeout(slot.timer);
    slot.timer = undefined;
    this.untie(slot);
    if (s.slots.get(slot.no) !== slot) return;
    s.slots.delete(slot.no);
    if (s.connector === slot) s.connector = undefined;
    if (s.state === 'pending' && s.slots.size === 0) this.remove(s);
  }

  /** Forget a session and its slots. Idempotent. */
  remove(s: RdmaSession): void {
    if (s.state === 'closed') return;
    s.state = 'closed';
    clearTimeout(s.timer);
    for (const slot of s.slots.values()) {
      clearTimeout(slot.timer);
      this.untie(slot);
    }
    s.slots.clear();
    s.connector = undefined;
    s.overflow = undefined;
    if (this.byId.get(s.id) === s) {
      this.byId.delete(s.id);
      const left = this.countOf(s.identity.name) - 1;
      if (left > 0) this.#perIdentity.set(s.identity.name, left);
      else this.#perIdentity.delete(s.identity.name);
    }
    s.markEnded();
  }

  /** Cut the tie between a slot and the socket its reservation was issued to. */
  untie(slot: RdmaSlot): void {
    const socket = slot.socket;
    if (!socket) return;
    slot.socket = undefined;
    if (this.#bySocket.get(socket) === slot) this.#bySocket.delete(socket);
  }

  /** A free slot number, or -1 when every slot is taken. */
  #freeSlot(s: RdmaSession): number {
    const n = this.limits.slots;
    if (s.slots.size >= n) return -1;
    for (let i = 0; i < n; i++) {
      const no = (s.nextSlot + i) % n;
      if (!s.slots.has(no)) {
        s.nextSlot = (no + 1) % n;
        return no;
      }
    }
    return -1;
  }
}

// ---- the transport ----------------------------------------------------------------

export interface RdmaTransportOptions {
  config: RdmaConfig;
  /** Attach token lifetime (a reservation lives as long, plus a grace). */
  tokenTtlMs: number;
  native: NativeModule;
  /** The gateway's shared pump, created on first use (only when rdma listens). */
  hub: () => PumpHub;
  registry: AttachRegistry<GatewaySocket>;
  metrics: GatewayMetrics;
  meter: Meter;
  logger: Logger;
}

export class RdmaTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_RDMA;
  readonly version = 1;
  readonly sessions: RdmaSessions;
  #listener: RawRdmaListener | undefined;
  #hub: PumpHub | undefined;
  /** Why the transport does not listen (the NO_RDMA_DEVICE detail). */
  #why = 'the rdma transport has not started';
  /** Set by close(): no new sessions, connections or binds. */
  #closing = false;
  /** Connected (or connecting) sessions by connection id. */
  readonly #byConn = new Map<number, RdmaSession>();
  readonly #refusals: Counter;
  /** Refusals are all counted, but logged at most 20 times per 10 s: a hostile client must not flood the log. */
  readonly #refusalLog: RateLimitedWarn;
  readonly #failures: Counter;

  constructor(private readonly o: RdmaTransportOptions) {
    const cfg = o.config;
    this.sessions = new RdmaSessions({
      slots: cfg.slots,
      maxSessions: cfg.max_sessions,
      maxSessionsPerIdentity: cfg.max_sessions_per_identity,
      reservationMs: o.tokenTtlMs + RESERVATION_GRACE_MS,
    });
    const m = o.meter;
    this.#refusals = m.createCounter(RDMA_METRICS.refused.name, { description: RDMA_METRICS.refused.description, unit: RDMA_METRICS.refused.unit });
    this.#refusalLog = new RateLimitedWarn(o.logger);
    this.#failures = m.createCounter(RDMA_METRICS.failures.name, { description: RDMA_METRICS.failures.description, unit: RDMA_METRICS.failures.unit });
    m.createObservableGauge(RDMA_METRICS.sessions.name, { description: RDMA_METRICS.sessions.description, unit: RDMA_METRICS.sessions.unit }).addCallback((r) =>
      r.observe(this.sessionCount),
    );
  }

  /** Whether the rdma_cm listener is up. */
  get listening(): boolean {
    return this.#listener !== undefined;
  }

  /** Why offers are declined NO_RDMA_DEVICE ('' while listening). */
  get unavailableReason(): string {
    return this.#listener ? '' : this.#why;
  }

  /** The listener's port (0 when not listening). */
  get port(): number {
    return this.#listener?.port ?? 0;
  }

  /** Sessions with a connection (connecting or established). */
  get sessionCount(): number {
    return this.#byConn.size;
  }

  /** The receive region this side registers per connection. */
  get #region(): RdmaRegionOptions {
    const c = this.o.config;
    return { ringLog2: Math.log2(c.ring_bytes), slots: c.slots, credits: c.credits, keepaliveMs: c.keepalive_ms };
  }

  async start(): Promise<void> {
    const cfg = this.o.config;
    const rdma = this.o.native.rdma;
    if (cfg.address === '') {
      this.#why = 'no RDMA address configured (transports.rdma.address)';
      return;
    }
    if (!rdma.available || typeof rdma.listen !== 'function') {
      this.#why = !rdma.available
        ? rdma.reason || 'no RDMA device'
        : 'this build of the native addon has no rdma listener (rdma.listen): rebuild it with npm run build:native';
      this.o.logger.warn({ address: cfg.address, reason: this.#why }, 'rdma transport not serving');
      return;
    }
    const hub = this.o.hub();
    let listener: RawRdmaListener;
    try {
      listener = rdma.listen(hub.pump.raw, { addr: cfg.address, port: cfg.port, ...this.#region });
    } catch (err) {
      this.#why = `the rdma listener on ${cfg.address}:${cfg.port} did not start: ${(this.o.native.translateError(err) as Error).message}`;
      this.o.logger.error({ address: cfg.address, port: cfg.port, err: this.#why }, 'rdma transport not serving');
      return;
    }
    this.#hub = hub;
    this.#listener = listener;
    hub.onRdma(listener.id, (e) => this.#onListenerEvent(listener, e));
    this.o.logger.info({ address: cfg.address, port: listener.port, ringBytes: cfg.ring_bytes, slots: cfg.slots }, 'rdma listener serving');
  }

  // ---- negotiation ----------------------------------------------------------

  accept(offer: TransportOffer, ctx: OfferContext): OfferOutcome {
    const decline = (reason: DeclineReason, detail: string): OfferOutcome => ({ ok: false, reason, detail });
    if (ctx.socketKind !== 'stream') return decline(DeclineReason.DECLINE_REASON_KIND_UNSUPPORTED, 'rdma carries stream sockets only');
    if (this.#closing) return decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, 'rdma is stopping on this gateway');
    const listener = this.#listener;
    if (!listener) return decline(DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE, this.#why);
    const params = offer.params?.$case === 'rdma' ? offer.params.rdma : undefined;
    const r = this.sessions.reserve(ctx.identity, params?.sessionId ?? '');
    if (!r.ok) return decline(r.reason, r.detail);
    const cfg = this.o.config;
    return {
      ok: true,
      accepted: {
        kind: this.kind,
        version: this.version,
        params: {
          $case: 'rdma',
          rdma: { address: cfg.address, port: listener.port, ringBytes: cfg.ring_bytes, sessionId: r.session.id, slot: r.slot.no, newSession: r.newSession, slots: cfg.slots },
        },
      },
    };
  }

  issued(socket: GatewaySocket, accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>): void {
    if (accepted.params?.$case !== 'rdma') return;
    const { sessionId, slot } = accepted.params.rdma;
    if (!this.sessions.issued(socket, sessionId, slot)) trace(`socket ${socket.id}: no reservation of slot ${slot} in session ${sessionId} to tie it to`);
  }

  /** A socket left the table: a reservation it still holds (it never attached) is freed at once. */
  socketRemoved(socket: GatewaySocket): void {
    const slot = this.sessions.reservationOf(socket);
    if (slot?.state === 'reserved') this.sessions.free(slot);
  }

  abandoned(accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>): void {
    if (accepted.params?.$case !== 'rdma') return;
    const { sessionId, slot } = accepted.params.rdma;
    this.sessions.abandon(sessionId, slot);
  }

  /** Redeem a token as the data plane presents it: the short form (connect private data) or the whole token. */
  #redeem(token: Uint8Array): GatewaySocket {
    if (token.length === SHORT_TOKEN_BYTES) return this.o.registry.redeemShort(token, this.kind);
    if (token.length === ATTACH_TOKEN_BYTES) return this.o.registry.redeem(token, this.kind);
    throw new AttachTokenError('wrong_token');
  }

  #refuse(reason: RefusalReason, detail: string, extra: Record<string, unknown> = {}): void {
    this.#refusals.add(1, { reason });
    this.#refusalLog.warn({ reason, ...extra }, `rdma attach refused: ${detail}`);
  }

  #tokenFailure(err: unknown): void {
    const failure = err instanceof AttachTokenError ? err.failure : 'wrong_token';
    this.o.metrics.recordAttach('rdma', failure === 'wrong_transport' ? 'error' : failure);
  }

  // ---- the listener: connection requests ----------------------------------------

  #onListenerEvent(listener: RawRdmaListener, e: RdmaEvent): void {
    if (e.event === 'request') return this.#onRequest(listener, e);
    if (e.event === 'failed' || e.event === 'closed') {
      // The listener itself went down (e.g. its device was removed): decline from now on, saying why.
      if (this.#listener !== listener) return;
      this.#why = `the rdma listener on ${this.o.config.address}:${listener.port} went down (${e.code}${e.message ? `: ${e.message}` : ''})`;
      this.o.logger.error({ code: e.code, errno: e.errno }, this.#why);
      this.#closeListener();
    }
  }

  #onRequest(listener: RawRdmaListener, e: Extract<RdmaEvent, { event: 'request' }>): void {
    const reject = (reason: RefusalReason, detail: string) => {
      this.#refuse(reason, detail, { peer: e.peer });
      try {
        listener.reject(e.conn);
      } catch {
        // the listener is closing
      }
    };
    if (this.#closing) return reject('shutting_down', 'the gateway is stopping');
    let target: GatewaySocket;
    try {
      target = this.#redeem(e.token);
    } catch (err) {
      this.#tokenFailure(err);
      return reject('token', (err as Error).message);
    }
    const slot = this.sessions.reservationOf(target);
    const s = slot?.session;
    const fail = (reason: RefusalReason, detail: string) => {
      this.o.metrics.recordAttach('rdma', 'error');
      if (slot?.state === 'reserved') this.sessions.free(slot);
      reject(reason, `${detail} (socket ${target.id})`);
    };
    if (!slot || !s || slot.state !== 'reserved') return fail('no_session', 'the socket holds no rdma reservation (it expired, or the socket attached already)');
    if (s.state !== 'pending' || s.conn) return fail('no_session', `rdma session ${s.id} has a connection already (the client binds further sockets over it)`);
    if (!(target instanceof StreamSocket) || target.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) return fail('not_waiting', 'the socket is not waiting for an attach');
    let conn: RawRdmaConn;
    try {
      conn = listener.accept(e.conn, this.#region);
    } catch (err) {
      return fail('resource', `cannot accept the connection: ${(this.o.native.translateError(err) as Error).message}`);
    }
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.state = 'linking';
    slot.target = target;
    s.state = 'connecting';
    s.conn = conn;
    s.peer = e.peer;
    this.#byConn.set(conn.id, s);
    this.#hub!.onRdma(conn.id, (ev) => this.#onConnEvent(s, conn, ev));
    // rdma_cm times a stalled handshake out by itself; this bounds it whatever the native side does.
    s.timer = setTimeout(() => {
      if (s.state !== 'connecting') return;
      this.o.logger.warn({ session: s.id, peer: s.peer }, 'rdma connection not established in time: closing it');
      this.#closeConn(s, conn);
    }, this.o.tokenTtlMs + RESERVATION_GRACE_MS);
    s.timer.unref();
    trace(`session ${s.id}: connection ${conn.id} from ${e.peer} accepted for socket ${target.id} (slot ${slot.no})`);
  }

  // ---- connection events ----------------------------------------------------------

  #onConnEvent(s: RdmaSession, conn: RawRdmaConn, e: RdmaEvent): void {
    switch (e.event) {
      case 'established':
        return this.#established(s);
      case 'bind':
        return this.#bind(s, e.slot, e.token);
      case 'progress': {
        const link = this.#liveLink(s, e.slot);
        if (link && (e.toFd || e.toPeer)) link.events.progress(e.toFd, e.toPeer);
        return;
      }
      case 'fdEof':
        this.#liveLink(s, e.slot)?.events.hostEnded?.();
        return;
      case 'peerEof':
        this.#liveLink(s, e.slot)?.events.clientEnded?.();
        return;
      case 'slotEnd':
        return this.#slotEnd(s, e);
      case 'closed':
      case 'failed':
        return this.#connEnded(s, conn, e);
      default:
        return;
    }
  }

  #liveLink(s: RdmaSession, no: number): SlotLink | undefined {
    const link = s.slots.get(no)?.link;
    return link && !link.settled ? link : undefined;
  }

  #established(s: RdmaSession): void {
    if (s.state !== 'connecting') return;
    clearTimeout(s.timer);
    s.timer = undefined;
    s.state = 'live';
    this.o.logger.info({ session: s.id, identity: s.identity.name, peer: s.peer }, 'rdma session connected');
    for (const slot of [...s.slots.values()]) {
      if (slot.state !== 'linking') continue;
      const target = slot.target!;
      if (!this.#link(s, slot, target)) this.#closeUnlinked(s, slot);
    }
    const early = s.early;
    s.early = [];
    for (const b of early) this.#bind(s, b.slot, b.token);
  }

  /** A later socket presents its token over the connection, for `no`. */
  #bind(s: RdmaSession, no: number, token: Buffer): void {
    if (s.state === 'connecting' && s.early.length < this.o.config.slots) {
      s.early.push({ slot: no, token });
      return;
    }
    if (s.state !== 'live') return;
    const slot = s.slots.get(no);
    const extra = { session: s.id, slot: no };
    if (slot && slot.state !== 'reserved') {
      // Never close a slot that carries (or is closing) a socket on a bad BIND: the client only confuses itself.
      this.#refuse('busy', `slot ${no} of session ${s.id} is ${slot.state}`, extra);
      return;
    }
    // Refused: the client sees its slot closed (and negotiates again, or gives the socket up).
    const refuse = (reason: RefusalReason, detail: string) => {
      if (reason !== 'token') this.o.metrics.recordAttach('rdma', 'error');
      this.#refuse(reason, detail, extra);
      const held = slot ?? this.sessions.hold(s, no);
      if (held) this.#closeUnlinked(s, held);
    };
    if (this.#closing) return refuse('shutting_down', 'the gateway is stopping');
    let target: GatewaySocket;
    try {
      target = this.#redeem(token);
    } catch (err) {
      this.#tokenFailure(err);
      return refuse('token', (err as Error).message);
    }
    if (!slot) return refuse('no_session', `slot ${no} is not reserved in session ${s.id} (socket ${target.id})`);
    if (this.sessions.reservationOf(target) !== slot) return refuse('no_session', `socket ${target.id} did not reserve slot ${no} of session ${s.id}`);
    if (!(target instanceof StreamSocket) || target.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) return refuse('not_waiting', `socket ${target.id} is not waiting for an attach`);
    if (!this.#link(s, slot, target)) this.#closeUnlinked(s, slot);
  }

  /** Hand the slot to the socket as its native data channel; false if the socket would not take it. */
  #link(s: RdmaSession, slot: RdmaSlot, target: StreamSocket): boolean {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.target = undefined;
    const early = target.host.readableLength;
    if (early > 0) {
      // JS already holds host bytes (never for a fresh socket: they come paused); an rdma link cannot carry them.
      this.o.metrics.recordAttach('rdma', 'error');
      this.#refuse('not_waiting', `socket ${target.id} holds ${early} bytes from the host that an rdma link cannot carry`, { session: s.id, slot: slot.no });
      return false;
    }
    try {
      target.attach(this.#channel(s, slot));
    } catch (err) {
      this.o.metrics.recordAttach('rdma', 'error');
      trace(`session ${s.id}: socket ${target.id} refused slot ${slot.no}: ${(err as Error).message}`);
      return false;
    }
    slot.target = target;
    this.o.metrics.recordAttach('rdma', 'ok');
    trace(`session ${s.id}: slot ${slot.no} carries socket ${target.id}`);
    return true;
  }

  #channel(s: RdmaSession, slot: RdmaSlot): NativeDataChannel {
    const native = this.o.native;
    return {
      transport: this.kind,
      mode: 'native',
      start: (hostFd: number, prefix: Buffer[], events: NativeLinkEvents): NativeLink => {
        const pending = prefix.reduce((n, b) => n + b.length, 0);
        // RawRdmaConn.link() takes no prefix: refuse before taking anything, the socket stays as it was.
        if (pending > 0) throw new NativeError(`an rdma link cannot carry the ${pending} bytes already read from the host`);
        const conn = s.conn;
        if (s.state !== 'live' || !conn) throw new SocketClosedError(`rdma session ${s.id} is not connected`);
        const fd = native.dupFd(hostFd);
        try {
          conn.link(slot.no, fd);
        } catch (err) {
          native.closeFd(fd);
          throw native.translateError(err);
        }
        slot.state = 'open';
        const link = this.#slotLink(events);
        slot.link = link;
        const call = <T>(fn: () => T): T => {
          try {
            return fn();
          } catch (err) {
            throw native.translateError(err);
          }
        };
        return {
          ended: link.ended,
          close: () => this.#abortSlot(s, slot, link),
          shutdownHost: (read: boolean, write: boolean) => {
            if (link.settled) throw new SocketClosedError(`the rdma link of slot ${slot.no} has ended`);
            call(() => conn.shutdownSlot(slot.no, read, write));
          },
          setHostOption: (o: HostOption) =>
            applyHostOption(
              {
                setHostSockopt: (name: HostSockopt, value: number) => {
                  const level = name.startsWith('TCP_') ? native.constants.IPPROTO_TCP : native.constants.SOL_SOCKET;
                  if (link.settled || !call(() => conn.setSlotSockopt(slot.no, level, native.constants[name], value))) {
                    throw new SocketClosedError(`the rdma link of slot ${slot.no} has no descriptor`);
                  }
                },
              },
              o,
              (err) => err instanceof SocketClosedError,
            ),
        };
      },
    };
  }

  #slotLink(events: NativeLinkEvents): SlotLink {
    let resolve!: (e: NativeLinkEnd) => void;
    const link: SlotLink = {
      events,
      ended: new Promise<NativeLinkEnd>((r) => (resolve = r)),
      settled: false,
      closing: false,
      settle(end: NativeLinkEnd) {
        if (link.settled) return;
        link.settled = true;
        resolve(end);
      },
    };
    return link;
  }

  /** NativeLink.close(): abort the slot (RST to the host, CLOSE to the client); resolves on its slotEnd. */
  #abortSlot(s: RdmaSession, slot: RdmaSlot, link: SlotLink): Promise<NativeLinkEnd> {
    if (link.settled || link.closing) return link.ended;
    link.closing = true;
    try {
      if (!s.conn || s.state !== 'live') throw new Error('not connected');
      s.conn.closeSlot(slot.no, true);
    } catch {
      link.settle({ reason: 'aborted', errno: 0 });
      return link.ended;
    }
    const timer = setTimeout(() => {
      if (link.settled) return;
      this.o.logger.warn({ session: s.id, slot: slot.no }, `rdma: no slotEnd ${END_WAIT_MS} ms after closing the slot`);
      link.settle({ reason: 'aborted', errno: 0 });
    }, END_WAIT_MS);
    timer.unref();
    void link.ended.then(() => clearTimeout(timer));
    return link.ended;
  }

  /** Close a slot no socket took (CLOSE to the client); its number is reused after its slotEnd. */
  #closeUnlinked(s: RdmaSession, slot: RdmaSlot): void {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.target = undefined;
    slot.state = 'closing';
    this.sessions.untie(slot);
    try {
      if (!s.conn) throw new Error('not connected');
      s.conn.closeSlot(slot.no, true);
    } catch {
      this.sessions.free(slot);
    }
  }

  #slotEnd(s: RdmaSession, e: Extract<RdmaEvent, { event: 'slotEnd' }>): void {
    const slot = s.slots.get(e.slot);
    if (!slot || slot.state === 'reserved' || slot.state === 'linking') return;
    if (slot.link) {
      const reason: NativeLinkEnd['reason'] = e.reason === 'ok' ? 'ok' : e.reason === 'error' ? 'error' : 'aborted';
      slot.link.settle(e.code ? { reason, errno: e.errno, code: e.code } : { reason, errno: e.errno });
      if (e.reason === 'error') trace(`session ${s.id}: slot ${e.slot} ended: ${e.code || `errno ${e.errno}`}`);
      if (e.code === DISCONNECTED) s.cutOff = true;
    }
    this.sessions.free(slot);
  }

  #connEnded(s: RdmaSession, conn: RawRdmaConn, e: Extract<RdmaEvent, { event: 'closed' | 'failed' }>): void {
    if (this.#byConn.get(conn.id) !== s) return;
    // A client that disconnects once its sockets are done (the SDK closing its Gateway) ended its session;
    // a disconnect failed only if it cut sockets off.
    const idleDisconnect = e.event === 'closed' && e.code === DISCONNECTED && !s.cutOff && ![...s.slots.values()].some((sl) => sl.link && !sl.link.settled);
    const failed = e.code !== 'ok' && !idleDisconnect;
    // slotEnd events normally came first; a socket still on the connection fails with the connection's code.
    for (const slot of s.slots.values()) {
      slot.link?.settle(failed ? { reason: 'error', errno: e.errno, code: e.code } : { reason: 'aborted', errno: e.errno });
    }
    if (failed) this.#failures.add(1, { code: e.code });
    const level = failed && !this.#closing ? 'warn' : 'debug';
    this.o.logger[level](
      { session: s.id, identity: s.identity.name, peer: s.peer, code: e.code, errno: e.errno, established: s.state === 'live' },
      `rdma session ${e.event === 'failed' ? 'failed' : 'ended'}${e.message ? `: ${e.message}` : ''}`,
    );
    this.#byConn.delete(conn.id);
    this.#hub?.offRdma(conn.id);
    s.conn = undefined;
    this.sessions.remove(s);
  }

  #closeConn(s: RdmaSession, conn: RawRdmaConn): void {
    try {
      conn.close();
    } catch (err) {
      // Already closed natively: no event will come; end it here.
      this.#connEnded(s, conn, { type: 'rdma', rdma: conn.id, event: 'closed', code: 'ok', errno: 0, message: (err as Error).message });
    }
  }

  #closeListener(): void {
    const listener = this.#listener;
    if (!listener) return;
    this.#listener = undefined;
    this.#hub?.offRdma(listener.id);
    try {
      listener.close();
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message }, 'rdma: closing the listener failed');
    }
  }

  /** Stop taking new sessions, connections and binds; running sockets keep their links (the socket table drains them). */
  async close(): Promise<void> {
    this.#closing = true;
  }

  /** After the socket table drained (or was destroyed): close every connection, then the listener. Idempotent. */
  async shutdown(): Promise<void> {
    this.#closing = true;
    const waits: Promise<unknown>[] = [];
    for (const s of [...this.sessions.byId.values()]) {
      const conn = s.conn;
      if (!conn) {
        this.sessions.remove(s);
        continue;
      }
      this.#closeConn(s, conn);
      waits.push(
        Promise.race([
          s.ended,
          new Promise<void>((r) =>
            setTimeout(() => {
              if (s.state !== 'closed') {
                this.o.logger.warn({ session: s.id }, `rdma: connection not closed ${END_WAIT_MS} ms after close()`);
                this.#connEnded(s, conn, { type: 'rdma', rdma: conn.id, event: 'closed', code: 'ok', errno: 0, message: 'gave up waiting for the close' });
              }
              r();
            }, END_WAIT_MS).unref(),
          ),
        ]),
      );
    }
    await Promise.all(waits);
    this.#closeListener();
  }
}
