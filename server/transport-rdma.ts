/**
 * The `rdma` data plane: clients on other hosts with an RDMA device move
 * payload over one reliable-connected queue pair per client session; the
 * native connection pumps each socket's slot to and from its host socket on
 * the I/O thread, so no payload byte enters the gateway's JS heap. Sessions,
 * slots and their lifecycle: native/RDMA.md "Gateway sessions"; the session
 * and reservation book: server/rdma-sessions.ts.
 */
import type { Counter } from '@opentelemetry/api';
import type { RawRdmaConn, RawRdmaListener, RdmaLinkResume, RdmaRegionOptions } from '../native/index.js';
import { DeclineReason, TransportKind, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import { AttachTokenError, ATTACH_TOKEN_BYTES, SHORT_TOKEN_BYTES } from './attach.js';
import type { Config } from './config.js';
import { NativeError } from '../proto/errors.js';
import { END_WAIT_MS, RESERVATION_GRACE_MS, SlotRefusals, tokenOutcome, type SessionTransportOptions } from './slot-session.js';
import { RdmaSessions, type RdmaSession, type RdmaSlot, type SlotLink } from './rdma-sessions.js';
import type { PumpHub, RdmaEvent } from '../native/pump-hub.js';
import type { GatewaySocket, StreamSocket } from './socket-table.js';
import type { NativeDataChannel, NativeLink, NativeLinkEnd, NativeLinkEvents, OfferContext, OfferOutcome, Transport } from './transport.js';
import { isTracerEnabled, tracer } from '../native/trace.js';
import { resumeToken } from '../proto/resume-wire.js';
import { ResumeBook, failoverHooks } from './rdma-resume.js';
import { RdmaPreissue, type Answer, type SlotAnswer } from './rdma-preissue.js';
import { RdmaMoves } from './rdma-move.js';
import { startSlotLink } from './rdma-slot-link.js';

const trace = tracer('rdma');
/** SOCKGATE_TRACE=rdma-flow: the native connections print their flow state (credits, cursors) every keepalive tick. */
const FLOW_TRACE = isTracerEnabled('rdma-flow');

export type RdmaConfig = Config['transports']['rdma'];

/** The end code of a connection (and of the slots it cut off) whose peer went away. */
const DISCONNECTED = 'ERR_SOCKGATE_RDMA_DISCONNECTED';

/** The rdma plane's own metrics, declared once (served with the gateway's). */
export const RDMA_METRICS = {
  refused: { name: 'sockgate.rdma.refusals', description: 'rdma connection requests and binds refused, by reason', unit: '{attach}' },
  failures: { name: 'sockgate.rdma.connection_failures', description: 'rdma connections that failed, by code', unit: '{connection}' },
  sessions: { name: 'sockgate.rdma.sessions', description: 'rdma client sessions with a connection (connecting or established)', unit: '{session}' },
  failovers: { name: 'sockgate.rdma.failovers', description: 'sockets whose rdma connection failed: resumed (to a new rdma connection or the tcp data port), expired or refused, by cause', unit: '{socket}' },
} as const;

export type RefusalReason = 'token' | 'no_session' | 'not_waiting' | 'busy' | 'resource' | 'shutting_down' | 'slot';

export interface RdmaTransportOptions extends SessionTransportOptions {
  config: RdmaConfig;
  /** The gateway's shared pump, created on first use (only when rdma listens). */
  hub: () => PumpHub;
  /** The tcp data port clients resume on (live failover, with config resume_ms > 0). */
  dataPort?: () => { host: string; port: number };
  highWatermark?: number;
}

export class RdmaTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_RDMA;
  /** v2: pre-issued slots (RdmaOffer.preissue / slot, RdmaAttach.linked / preissued_slots); v1 clients never ask. */
  readonly version = 2;
  readonly sessions: RdmaSessions;
  #listener: RawRdmaListener | undefined;
  #hub: PumpHub | undefined;
  /** Why the transport does not listen (the NO_RDMA_DEVICE detail). */
  #why = 'the rdma transport has not started';
  /** Set by close(): no new sessions, connections or binds. */
  #closing = false;
  /** Connected (or connecting) sessions by connection id. */
  readonly #byConn = new Map<number, RdmaSession>();
  readonly #refusals: SlotRefusals;
  readonly #failures: Counter;
  /** Live failover: suspended sockets waiting for their resume on the data port. */
  readonly resume: ResumeBook;
  readonly #failover: ReturnType<typeof failoverHooks>;
  readonly #pre: RdmaPreissue;
  readonly #moves: RdmaMoves;

  constructor(private readonly o: RdmaTransportOptions) {
    const cfg = o.config;
    this.sessions = new RdmaSessions({
      slots: cfg.slots,
      maxSessions: cfg.max_sessions,
      maxSessionsPerIdentity: cfg.max_sessions_per_identity,
      reservationMs: o.tokenTtlMs + RESERVATION_GRACE_MS,
    });
    const m = o.meter;
    this.#refusals = new SlotRefusals(m, RDMA_METRICS.refused, o.logger, 'rdma');
    this.#failures = m.createCounter(RDMA_METRICS.failures.name, { description: RDMA_METRICS.failures.description, unit: RDMA_METRICS.failures.unit });
    const moves = m.createCounter(RDMA_METRICS.failovers.name, { description: RDMA_METRICS.failovers.description, unit: RDMA_METRICS.failovers.unit });
    this.resume = new ResumeBook({
      resumeMs: o.dataPort ? cfg.resume_ms : 0,
      native: o.native,
      pump: () => o.hub().pump,
      logger: o.logger,
      highWatermark: o.highWatermark ?? 1 << 20,
      record: (outcome, cause, to) => moves.add(1, { outcome, cause, ...(to ? { to } : {}) }),
    });
    this.#pre = new RdmaPreissue({
      sessions: this.sessions,
      max: cfg.max_preissued_slots,
      closing: () => this.#closing,
      refused: (detail, extra) => (this.o.metrics.recordAttach('rdma', 'error'), this.#refuse('slot', detail, extra)),
      link: (s, slot, target) => this.#link(s, slot, target),
      revoke: (socket) => o.registry.revoke(socket),
    });
    this.#failover = failoverHooks(this.resume, o.native, (s) => s.conn?.close(true));
    this.#moves = new RdmaMoves({
      book: this.resume,
      sessions: this.sessions,
      logger: o.logger,
      native: o.native,
      closing: () => this.#closing,
      region: () => this.#region,
      refuse: (reason, detail, extra) => this.#refuse(reason, detail, extra),
      connected: (s, conn, peer) => this.#connected(s, conn, peer),
      startLink: (s, slot, fd, events, resume) => this.#startLink(s, slot, fd, events, resume),
      closeUnlinked: (s, slot) => this.#closeUnlinked(s, slot),
    });
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
    return { ringLog2: Math.log2(c.ring_bytes), slots: c.slots, credits: c.credits, keepaliveMs: c.keepalive_ms, pollUs: c.poll_us, trace: FLOW_TRACE, resume: this.resume.enabled };
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
    const answer = (p: SlotAnswer): OfferOutcome => {
      const cfg = this.o.config;
      const rdma = { address: cfg.address, port: listener.port, ringBytes: cfg.ring_bytes, slots: cfg.slots, ...p, ...this.#resumeParams() };
      return { ok: true, accepted: { kind: this.kind, version: this.version, params: { $case: 'rdma', rdma } } };
    };
    if (params?.slot !== undefined) {
      if (!ctx.connect) return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, 'a pre-issued rdma slot (RdmaOffer.slot) may be named in a Connect only');
      return this.#pre.acceptNamed(params, ctx.identity, answer);
    }
    const r = this.sessions.reserve(ctx.identity, params?.sessionId ?? '');
    if (!r.ok) return decline(r.reason, r.detail);
    return answer({ sessionId: r.session.id, slot: r.slot.no, newSession: r.newSession, linked: false, preissuedSlots: this.#pre.preissue(r.session, params) });
  }

  /** Where and how long a socket of this gateway may resume (RdmaAttach.resume_*; port 0 = no failover). */
  #resumeParams(): { resumeHost: string; resumePort: number; resumeMs: number } {
    const d = this.resume.enabled ? this.o.dataPort?.() : undefined;
    return d && d.port ? { resumeHost: d.host, resumePort: d.port, resumeMs: this.o.config.resume_ms } : { resumeHost: '', resumePort: 0, resumeMs: 0 };
  }

  issued(socket: GatewaySocket, accepted: Answer, token?: Uint8Array): Answer | void {
    if (accepted.params?.$case !== 'rdma') return;
    const named = this.#pre.issued(socket, accepted, token);
    if (named) return named;
    const { sessionId, slot } = accepted.params.rdma;
    if (!this.sessions.issued(socket, sessionId, slot)) trace(`socket ${socket.id}: no reservation of slot ${slot} in session ${sessionId} to tie it to`);
  }

  /** A socket left the table: a reservation it still holds (it never attached) is freed at once. */
  socketRemoved(socket: GatewaySocket): void {
    this.sessions.socketRemoved(socket);
  }

  abandoned(accepted: Answer): void {
    if (accepted.params?.$case !== 'rdma' || this.#pre.abandoned(accepted)) return;
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
    this.#refusals.refuse(reason, detail, extra);
  }

  #tokenFailure(err: unknown): void {
    this.o.metrics.recordAttach('rdma', tokenOutcome(err));
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
    if (e.move) return this.#moves.request(listener, e);
    let target: GatewaySocket;
    try {
      target = this.#redeem(e.token);
    } catch (err) {
      this.#tokenFailure(err);
      return reject('token', (err as Error).message);
    }
    const claim = this.sessions.claim(target);
    if (!claim.ok) {
      this.o.metrics.recordAttach('rdma', 'error');
      return reject(claim.reason, claim.detail);
    }
    const { slot } = claim;
    const s = slot.session;
    const fail = (reason: RefusalReason, detail: string) => {
      this.o.metrics.recordAttach('rdma', 'error');
      if (slot.state === 'reserved') this.sessions.free(slot);
      reject(reason, `${detail} (socket ${target.id})`);
    };
    if (s.state !== 'pending' || s.conn) return fail('no_session', `rdma session ${s.id} has a connection already (the client binds further sockets over it)`);
    let conn: RawRdmaConn;
    try {
      conn = listener.accept(e.conn, this.#region);
    } catch (err) {
      return fail('resource', `cannot accept the connection: ${(this.o.native.translateError(err) as Error).message}`);
    }
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.state = 'linking';
    slot.target = claim.target;
    slot.resumeToken = resumeToken(e.token);
    this.#connected(s, conn, e.peer);
    trace(`session ${s.id}: connection ${conn.id} from ${e.peer} accepted for socket ${target.id} (slot ${slot.no})`);
  }

  /** An accepted connection becomes the session's (events routed, establishment bounded in time). */
  #connected(s: RdmaSession, conn: RawRdmaConn, peer: string): void {
    s.state = 'connecting';
    s.conn = conn;
    s.peer = peer;
    this.#byConn.set(conn.id, s);
    this.#hub!.onRdma(conn.id, (ev) => this.#onConnEvent(s, conn, ev));
    // rdma_cm times a stalled handshake out by itself; this bounds it whatever the native side does.
    s.timer = setTimeout(() => {
      if (s.state !== 'connecting') return;
      this.o.logger.warn({ session: s.id, peer: s.peer }, 'rdma connection not established in time: closing it');
      this.#closeConn(s, conn);
    }, this.o.tokenTtlMs + RESERVATION_GRACE_MS);
    s.timer.unref();
  }

  // ---- connection events ----------------------------------------------------------

  #onConnEvent(s: RdmaSession, conn: RawRdmaConn, e: RdmaEvent): void {
    switch (e.event) {
      case 'established':
        return this.#established(s);
      case 'bind':
        return this.#bind(s, e.slot, e.token, e.position);
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
      case 'suspended':
        return this.#failover.suspended(s, e);
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
    for (const b of early) this.#bind(s, b.slot, b.token, b.position);
  }

  /** A later socket presents its token over the connection, for `no` (with `position`: a moved socket, server/rdma-move.ts). */
  #bind(s: RdmaSession, no: number, token: Buffer, position?: bigint): void {
    if (s.state === 'connecting' && s.early.length < this.o.config.slots) {
      s.early.push({ slot: no, token, ...(position !== undefined ? { position } : {}) });
      return;
    }
    if (s.state !== 'live') return;
    if (position !== undefined) return this.#moves.bind(s, no, token, position);
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
    const claim = this.sessions.claim(target, { session: s, no });
    if (!claim.ok) return refuse(claim.reason, claim.detail);
    slot.resumeToken = resumeToken(token);
    if (!this.#link(s, slot, claim.target)) this.#closeUnlinked(s, slot);
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
        return this.#startLink(s, slot, native.dupFd(hostFd), events);
      },
    };
  }

  /** Link the slot to `fd` (ours from here; with `resume`, a moved socket's) and run it; the socket's NativeLink. */
  #startLink(s: RdmaSession, slot: RdmaSlot, fd: number, events: NativeLinkEvents, resume?: RdmaLinkResume): NativeLink {
    return startSlotLink({ native: this.o.native, logger: this.o.logger, failover: this.#failover }, s, slot, fd, events, resume);
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
    // The client gave back a pre-issued slot (its CLOSE; a Connect naming it meanwhile is answered unlinked).
    if (slot?.state === 'issued' || (slot?.state === 'reserved' && slot.preissued && !slot.socket)) return this.sessions.free(slot);
    if (!slot || slot.state === 'reserved' || slot.state === 'linking') return;
    if (slot.resumeToken && e.reason !== 'suspended') this.resume.untrack(slot.resumeToken);
    if (slot.link && !slot.link.suspended) {
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
      if (slot.link?.suspended) continue;
      if (slot.resumeToken) this.resume.untrack(slot.resumeToken);
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
        new Promise<void>((r) => {
          // Ref'd (and cleared once the session ended): the pump does not hold the process for rdma
          // connections, so an unref'd wait could let the loop run empty before their `closed` events.
          const timer = setTimeout(() => {
            if (s.state !== 'closed') {
              this.o.logger.warn({ session: s.id }, `rdma: connection not closed ${END_WAIT_MS} ms after close()`);
              this.#connEnded(s, conn, { type: 'rdma', rdma: conn.id, event: 'closed', code: 'ok', errno: 0, message: 'gave up waiting for the close' });
            }
            r();
          }, END_WAIT_MS);
          void s.ended.then(() => (clearTimeout(timer), r()));
        }),
      );
    }
    await Promise.all(waits);
    this.resume.close();
    this.#closeListener();
  }
}
