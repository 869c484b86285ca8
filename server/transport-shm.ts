/**
 * The `shm` data plane: clients on this host move payload through shared-memory
 * rings that the native pump drains into (and fills from) the host sockets, so
 * no payload byte enters the gateway's JS heap (native/SHM.md has the layout).
 * This file negotiates slots, attaches sessions, binds later sockets over a
 * session's control slot (or links them at their Connect, to a slot
 * pre-issued to the session and named in the offer) and ends sessions; the
 * session model is in shm-session.ts, ring accounting and autotuning in
 * shm-ring-budget.ts.
 *
 * A client that corrupts its shared memory ends its own session only
 * (ERR_SOCKGATE_RING_CORRUPT on its sockets, logged and counted).
 */
import { readFileSync } from 'node:fs';
import { whenReleased } from '../native/when-released.js';
import type { Counter } from '@opentelemetry/api';
import type { AttachListener, Eventfd, ShmRegion } from '../native/index.js';
import { DeclineReason, TransportKind, type Accepted, type ShmAttach, type ShmOffer, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import { SlotRefusedError } from '../proto/errors.js';
import type { Config } from './config.js';
import type { Identity, Policy } from './policy.js';
import type { ListenerEvent, PumpHub, RegionEvent } from '../native/pump-hub.js';
import type { GatewaySocket } from './socket-table.js';
import type { OfferContext, OfferOutcome, Transport } from './transport.js';
import { isLocalPeer } from './local-peer.js';
import { removeStaleSocket } from '../native/unix-socket-file.js';
import { listenAttachSocket } from './shm-attach-socket.js';
import { RingBudget } from './shm-ring-budget.js';
import { Session, Slot } from './shm-session.js';
import { END_WAIT_MS, RESERVATION_GRACE_MS, SlotBook, SlotRefusals, echo, tokenOutcome, type SessionTransportOptions } from './slot-session.js';
import { slotChannel, type SlotChannelHost } from './shm-slot-channel.js';
import { sendCtl, startControl, type ControlHost } from './shm-control.js';
import {
  CONTROL_RING_BYTES,
  CONTROL_SLOT,
  ShmStatus,
  decodeHello,
  encodeBound,
  readBootId,
  shmStatusName,
} from '../proto/shm-wire.js';
import { tracer } from '../native/trace.js';

export { isLocalPeer };

const trace = tracer('shm');

export type ShmConfig = Config['transports']['shm'];

/** A session refused at attach is remembered this long, so further offers naming it are declined at once. */
const REFUSED_MEMORY_MS = 60_000;
/** How long ending a session waits for its last control messages to reach the client's ring. */
const CONTROL_FLUSH_MS = 500;

/** The shm plane's own metrics, declared once (served with the gateway's). */
export const SHM_METRICS = {
  corrupt: { name: 'sockgate.shm.corrupt_sessions', description: 'shm sessions ended because the client corrupted its shared memory', unit: '{session}' },
  refused: { name: 'sockgate.shm.refusals', description: 'shm attaches and binds refused, by reason', unit: '{attach}' },
  grows: { name: 'sockgate.shm.ring_grows', description: 'Ring growth grants issued by autotuning, by direction', unit: '{grant}' },
  sessions: { name: 'sockgate.shm.sessions', description: 'Attached shm client sessions', unit: '{session}' },
  ringBytes: { name: 'sockgate.shm.ring_bytes', description: 'Ring bytes granted (both directions, every session)', unit: 'By' },
} as const;

export type RefusalReason = 'token' | 'identity' | 'no_session' | 'resource' | 'not_waiting' | 'malformed' | 'protocol' | 'shutting_down' | 'slot';

type Answer = Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>;

export interface ShmTransportOptions extends SessionTransportOptions {
  config: ShmConfig;
  hub: PumpHub;
  policy: Policy;
}

export class ShmTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_SHM;
  /** v2: pre-issued slots (ShmOffer.preissue / slot, ShmAttach.linked / preissued_slots); v1 clients never ask. */
  readonly version = 2;
  /** Sessions by id (pending, live and refused ones) and their slots: the one slot-session book. */
  readonly #book: SlotBook<Session, Slot>;
  /** Live sessions by region id and by attach connection. */
  readonly #byRegion = new Map<number, Session>();
  readonly #byConn = new Map<number, Session>();
  /** TS-charged ring bytes per identity name, and in total. */
  readonly #budget: RingBudget;
  /** What the control slot and a slot's data channel need of this transport. */
  readonly #controlHost: ControlHost;
  readonly #channelHost: SlotChannelHost;
  /** Pre-issued slots taken by a Connect, by its answer's parameters (accept -> issued or abandoned). */
  readonly #named = new WeakMap<ShmAttach, Slot>();
  #listener: AttachListener | undefined;
  #path = '';
  /** Inode of the socket file we bound, so stop() never removes a successor's file. */
  #pathIno = -1;
  #bootId = '';
  /** Set by close(): no new sessions, slots or attaches. */
  #closing = false;
  /** Refusal log rate limit: the current window, lines logged in it, and refusals not logged since the last line. */
  readonly #refusals: SlotRefusals;
  readonly #corrupt: Counter;

  constructor(private readonly o: ShmTransportOptions) {
    const m = o.meter;
    this.#budget = new RingBudget(o.config);
    const cfg = o.config;
    this.#book = new SlotBook<Session, Slot>({
      label: 'shm',
      firstSlot: 1, // slot 0 is the session's control slot
      slots: cfg.slots_per_session - 1,
      slotsKey: 'transports.shm.slots_per_session',
      // A session's cost is its ring memory, charged per reservation (charge below): no count limit.
      maxSessions: Number.POSITIVE_INFINITY,
      maxSessionsPerIdentity: Number.POSITIVE_INFINITY,
      reservationMs: o.tokenTtlMs + RESERVATION_GRACE_MS,
      newSession: (id, identity) => new Session(id, identity),
      newSlot: (s, no) => new Slot(s, no, cfg.initial_ring_bytes),
      charge: (who, s, created) => {
        const cost = 2 * cfg.initial_ring_bytes + (created ? 2 * CONTROL_RING_BYTES : 0);
        if (!this.#budget.charge(who, cost)) {
          return `ring memory cap reached: identity "${who}" holds ${this.ringBytes(who)} of ${cfg.max_ring_bytes_per_identity} bytes, the gateway ${this.#budget.bytes()} of ${cfg.max_ring_bytes_total}; a socket needs ${cost}`;
        }
        s.charged += cost;
        return '';
      },
      slotFreed: (slot) => {
        const bytes = slot.size[0] + slot.size[1] + slot.growing[0] + slot.growing[1];
        slot.session.charged -= bytes;
        this.#budget.uncharge(slot.session.identity.name, bytes);
      },
      sessionReleased: (s) => {
        this.#budget.uncharge(s.identity.name, s.charged);
        s.charged = 0;
      },
    });
    this.#refusals = new SlotRefusals(m, SHM_METRICS.refused, o.logger, 'shm');
    this.#corrupt = m.createCounter(SHM_METRICS.corrupt.name, { description: SHM_METRICS.corrupt.description, unit: SHM_METRICS.corrupt.unit });
    this.#controlHost = {
      native: o.native,
      hub: o.hub,
      config: o.config,
      refuse: (reason, detail, extra) => this.#refuse(reason, detail, extra),
      endSession: (s, why, level) => this.#endSession(s, why, level),
      bind: (s, slotNo, token) => this.#bind(s, slotNo, token),
      release: (s, slotNo, abort) => this.#release(s, slotNo, abort),
    };
    this.#channelHost = {
      kind: this.kind,
      native: o.native,
      hub: o.hub,
      config: o.config,
      budget: this.#budget,
      grows: m.createCounter(SHM_METRICS.grows.name, { description: SHM_METRICS.grows.description, unit: SHM_METRICS.grows.unit }),
      send: (s, msg) => sendCtl(this.#controlHost, s, msg),
      closeSlot: (s, slotNo, slot) => this.#closeSlot(s, slotNo, slot),
    };
    m.createObservableGauge(SHM_METRICS.sessions.name, { description: SHM_METRICS.sessions.description, unit: SHM_METRICS.sessions.unit }).addCallback((r) =>
      r.observe(this.#byRegion.size),
    );
    m.createObservableGauge(SHM_METRICS.ringBytes.name, { description: SHM_METRICS.ringBytes.description, unit: SHM_METRICS.ringBytes.unit }).addCallback((r) =>
      r.observe(this.#budget.bytes()),
    );
  }

  /** The attach socket's path, once started. */
  get path(): string {
    return this.#path;
  }

  /** Ring bytes charged (TS accounting): in total, or for one identity. */
  ringBytes(identity?: string): number {
    return this.#budget.bytes(identity);
  }

  /** Slots pre-issued to session `id` and unused (tests, diagnostics). */
  preissuedOf(id: string): number {
    return this.#book.byId.get(id)?.preissued ?? 0;
  }

  /** Attached sessions right now. */
  get sessionCount(): number {
    return this.#byRegion.size;
  }

  async start(): Promise<void> {
    this.#bootId = readBootId((p) => readFileSync(p, 'utf8'));
    this.o.native.setGatewayRingLimit(this.o.config.max_ring_bytes_total);
    const { listener, path, ino } = await listenAttachSocket(this.o.config.path, this.o.hub, this.o.native);
    this.#pathIno = ino;
    this.#listener = listener;
    this.#path = path;
    this.o.hub.onListener(listener.id, (e) => this.#onListenerEvent(e));
    this.o.logger.info({ path, bootId: this.#bootId }, 'shm attach socket listening');
  }

  // ---- negotiation ----------------------------------------------------------

  accept(offer: TransportOffer, ctx: OfferContext): OfferOutcome {
    const decline = (reason: DeclineReason, detail: string): OfferOutcome => ({ ok: false, reason, detail });
    if (this.#closing || !this.#listener) return decline(DeclineReason.DECLINE_REASON_UNSUPPORTED, 'shm is stopping on this gateway');
    if (ctx.socketKind !== 'stream') return decline(DeclineReason.DECLINE_REASON_KIND_UNSUPPORTED, 'shm carries stream sockets only');
    const shm = offer.params?.$case === 'shm' ? offer.params.shm : undefined;
    if (!isLocalPeer(ctx.peer)) {
      return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, `the control call comes from ${echo(ctx.peer)}, not from loopback or a Unix socket`);
    }
    if (!shm || shm.hostId === '') return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, 'the shm offer names no host (ShmOffer.host_id, the boot id)');
    if (this.#bootId === '' || shm.hostId !== this.#bootId) {
      return decline(DeclineReason.DECLINE_REASON_NOT_COLOCATED, `client host ${echo(shm.hostId)} is not this gateway's host (boot id ${this.#bootId || 'unknown'})`);
    }
    if (shm.slot !== 0) {
      if (!ctx.connect) return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, 'a pre-issued shm slot (ShmOffer.slot) may be named in a Connect only');
      return this.#acceptNamed(shm, ctx.identity);
    }
    const r = this.#book.reserve(ctx.identity, shm.sessionId);
    if (!r.ok) return decline(r.reason, r.detail);
    // Any socket of a pending session may attach it (the client attaches once and binds the rest), hence not r.newSession.
    return this.#answer({ sessionId: r.session.id, slot: r.slot.no, newSession: r.session.state === 'pending', linked: false, preissuedSlots: this.#preissue(r.session, shm) });
  }

  /** A Connect names a slot pre-issued to its session: taken for it (linked in issued()), or the Connect is refused. */
  #acceptNamed(shm: ShmOffer, identity: Identity): OfferOutcome {
    const t = this.#book.take(identity, shm.sessionId, shm.slot);
    if (!t.ok && t.why === 'resource') return { ok: false, reason: DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, detail: t.detail };
    if (!t.ok) {
      this.o.metrics.recordAttach('shm', 'error');
      this.#refuse('slot', t.detail, { identity: identity.name, slot: shm.slot });
      throw new SlotRefusedError(t.detail);
    }
    const out = this.#answer({ sessionId: t.session.id, slot: t.slot.no, newSession: false, linked: true, preissuedSlots: this.#preissue(t.session, shm) });
    if (out.ok && out.accepted.params?.$case === 'shm') this.#named.set(out.accepted.params.shm, t.slot);
    return out;
  }

  /** Slots to pre-issue with this answer, as the offer asks (live sessions only; transports.shm.max_preissued_slots unused per session). */
  #preissue(s: Session, shm: ShmOffer): number[] {
    return shm.preissue > 0 ? this.#book.preissue(s, shm.preissue, this.o.config.max_preissued_slots) : [];
  }

  #answer(p: Pick<ShmAttach, 'sessionId' | 'slot' | 'newSession' | 'linked' | 'preissuedSlots'>): OfferOutcome {
    const cfg = this.o.config;
    return { ok: true, accepted: { kind: this.kind, version: this.version, params: { $case: 'shm', shm: { path: this.#path, ringBytes: cfg.initial_ring_bytes, spinUs: cfg.spin_us, ...p } } } };
  }

  issued(socket: GatewaySocket, accepted: Answer): Answer | void {
    if (accepted.params?.$case !== 'shm') return;
    const p = accepted.params.shm;
    const named = this.#named.get(p);
    if (named) {
      this.#named.delete(p);
      return this.#linkNamed(socket, accepted, p, named);
    }
    if (!this.#book.issued(socket, p.sessionId, p.slot)) trace(`socket ${socket.id}: no reservation of slot ${p.slot} in session ${p.sessionId} to tie it to`);
  }

  /**
   * Link the Connect's new socket to the pre-issued slot it named, before the
   * answer goes out (a server that speaks first fills the ring at once). If
   * it cannot be linked, the answer says so (linked: false) and the slot stays
   * the socket's reservation, which the client BINDs as usual.
   */
  #linkNamed(socket: GatewaySocket, accepted: Answer, p: ShmAttach, slot: Slot): Answer | void {
    const s = slot.session;
    const unlinked = (why: string): Answer => {
      trace(`socket ${socket.id}: pre-issued slot ${slot.no} of session ${s.id} not linked: ${why}`);
      if (slot.state === 'reserved' && s.slots.get(slot.no) === slot) {
        slot.preissued = false;
        this.#book.arm(slot);
      }
      return { ...accepted, params: { $case: 'shm', shm: { ...p, linked: false } } };
    };
    // Given back meanwhile (the client aborted its Connect) or the session is going: the socket waits for an attach that will not come (its token expires).
    if (this.#closing || s.state !== 'live' || s.slots.get(slot.no) !== slot || slot.state !== 'reserved') return unlinked('the slot or its session is gone');
    if (!this.#book.issued(socket, s.id, slot.no)) return unlinked('no reservation to tie');
    const claim = this.#book.claim(socket, { session: s, no: slot.no });
    if (!claim.ok) return unlinked(claim.detail);
    try {
      s.region!.openSlot(slot.no, slot.size[0]);
    } catch (err) {
      return unlinked(`cannot open the slot: ${(err as Error).message}`);
    }
    if (!this.#link(s, slot.no, slot, claim.target)) return unlinked('the socket would not take it');
    // Linked: the token in the answer is spent.
    this.o.registry.revoke(socket);
  }

  abandoned(accepted: Answer): void {
    if (accepted.params?.$case !== 'shm') return;
    const p = accepted.params.shm;
    const named = this.#named.get(p);
    this.#named.delete(p);
    if (named) this.#book.giveBack(named);
    else this.#book.abandon(p.sessionId, p.slot);
    // Slots pre-issued with an answer that never went out are free again.
    const s = this.#book.byId.get(p.sessionId);
    if (s) for (const no of p.preissuedSlots) this.#book.unissue(s, no);
  }

  /** A socket left the table: a reservation it still holds (it never attached) is freed at once. */
  socketRemoved(socket: GatewaySocket): void {
    this.#book.socketRemoved(socket);
  }

  // ---- attach (new sessions) --------------------------------------------------

  #onListenerEvent(e: ListenerEvent): void {
    if (e.type === 'attach') this.#onAttach(e);
    else if (e.type === 'connClosed') {
      const s = this.#byConn.get(e.conn);
      if (s) {
        s.conn = undefined;
        void this.#endSession(s, 'the client closed its attach connection', 'debug');
      }
    }
  }

  #refuse(reason: RefusalReason, detail: string, extra: Record<string, unknown> = {}): void {
    this.#refusals.refuse(reason, detail, extra);
  }

  #onAttach(e: Extract<ListenerEvent, { type: 'attach' }>): void {
    const listener = this.#listener!;
    const peer = { pid: e.pid, uid: e.uid, gid: e.gid };
    const reject = (status: number, reason: RefusalReason, detail: string) => {
      this.#refuse(reason, detail, { peer, status: shmStatusName(status) });
      try {
        listener.reject(e.conn, status);
      } catch {
        // the listener is closing
      }
    };
    if (this.#closing) return reject(ShmStatus.SHUTTING_DOWN, 'shutting_down', 'the gateway is stopping');
    const hello = decodeHello(e.token);
    if (!hello) return reject(ShmStatus.MALFORMED, 'malformed', 'malformed hello token');
    let target: GatewaySocket;
    try {
      target = this.o.registry.redeem(hello.token, this.kind);
    } catch (err) {
      this.o.metrics.recordAttach('shm', tokenOutcome(err));
      return reject(ShmStatus.TOKEN, 'token', (err as Error).message);
    }
    const named = this.#book.byId.get(hello.sessionId);
    const s = named?.identity.name === target.identity.name ? named : undefined;
    const claim = this.#book.claim(target, { session: s, no: hello.slot });
    const slot = s?.slots.get(hello.slot);
    const fail = (status: number, reason: RefusalReason, detail: string) => {
      this.o.metrics.recordAttach('shm', 'error');
      if (slot && slot.state === 'reserved') this.#book.free(slot);
      reject(status, reason, detail);
    };
    if (!claim.ok) return fail(claim.reason === 'not_waiting' ? ShmStatus.NOT_WAITING : ShmStatus.NO_SESSION, claim.reason, claim.detail);
    if (!s || s.state !== 'pending' || !slot) {
      return fail(ShmStatus.NO_SESSION, 'no_session', `no pending session ${hello.sessionId} with slot ${hello.slot} reserved for identity "${target.identity.name}"`);
    }
    // SO_PEERCRED: a uid that maps to an identity must map to the socket's.
    let byUid: Identity | undefined;
    try {
      byUid = this.o.policy.identify({ peerUid: e.uid });
    } catch {
      byUid = undefined;
    }
    if (byUid && byUid.source === 'peercred' && byUid.name !== target.identity.name) {
      const detail = `peer uid ${e.uid} (pid ${e.pid}) is identity "${byUid.name}", the socket belongs to "${target.identity.name}"`;
      this.o.metrics.recordAttach('shm', 'error');
      this.#book.refuse(s, `shm attach refused: ${detail}`, REFUSED_MEMORY_MS);
      return reject(ShmStatus.POLICY, 'identity', detail);
    }
    const cfg = this.o.config;
    const native = this.o.native;
    let region: ShmRegion | undefined;
    let gwBell: Eventfd | undefined;
    let clBell: Eventfd | undefined;
    try {
      region = native.ShmRegion.create({ slots: cfg.slots_per_session, maxRingSize: cfg.max_ring_bytes, byteLimit: cfg.max_ring_bytes_per_identity });
      gwBell = new native.Eventfd();
      clBell = new native.Eventfd();
      region.setDoorbells(gwBell, clBell);
      region.openSlot(CONTROL_SLOT, CONTROL_RING_BYTES);
      region.openSlot(hello.slot, slot.size[0]);
      s.region = region;
      s.gwBell = gwBell;
      s.clBell = clBell;
      startControl(this.#controlHost, s);
    } catch (err) {
      // Reverse order of creation; the control link (if any) holds the region until it ends.
      s.region = undefined;
      s.ctlLink?.close().catch(() => {});
      s.ctlSock?.destroy();
      const cleanup = () => {
        try {
          region?.close();
          gwBell?.close();
          clBell?.close();
        } catch (e2) {
          this.o.logger.warn({ err: (e2 as Error).message }, 'shm: releasing a failed session');
        }
      };
      if (s.ctlLink) void s.ctlLink.ended.then(cleanup);
      else cleanup();
      s.ctlLink = undefined;
      s.ctlSock = undefined;
      return fail(ShmStatus.RESOURCE, 'resource', `cannot set up the session: ${(err as Error).message}`);
    }
    s.state = 'live';
    s.conn = e.conn;
    s.peer = peer;
    this.#byRegion.set(region.id, s);
    this.#byConn.set(e.conn, s);
    this.o.hub.onRegion(region.id, (ev) => this.#onRegionEvent(s, ev));
    listener.accept(e.conn, region, gwBell, clBell);
    this.o.logger.info({ session: s.id, identity: s.identity.name, peerPid: e.pid, peerUid: e.uid, peerGid: e.gid, socket: target.id }, 'shm session attached');
    this.#link(s, hello.slot, slot, claim.target);
  }

  /** BIND: a later socket presents its token over the session. */
  #bind(s: Session, slotNo: number, token: Buffer): void {
    const reply = (status: number, reason: RefusalReason | undefined, detail: string) => {
      if (reason) {
        this.o.metrics.recordAttach('shm', 'error');
        this.#refuse(reason, detail, { session: s.id, slot: slotNo });
      }
      sendCtl(this.#controlHost, s, encodeBound(slotNo, status, detail));
    };
    const slot = s.slots.get(slotNo);
    if (this.#closing) return reply(ShmStatus.SHUTTING_DOWN, 'shutting_down', 'the gateway is stopping');
    if (!slot || slot.state !== 'reserved') return reply(ShmStatus.NO_SESSION, 'no_session', `slot ${slotNo} is not reserved in session ${s.id}`);
    const failSlot = (status: number, reason: RefusalReason, detail: string) => {
      this.#book.free(slot);
      reply(status, reason, detail);
    };
    let target: GatewaySocket;
    try {
      target = this.o.registry.redeem(token, this.kind);
    } catch (err) {
      this.o.metrics.recordAttach('shm', tokenOutcome(err));
      this.#refuse('token', (err as Error).message, { session: s.id, slot: slotNo });
      this.#book.free(slot);
      return sendCtl(this.#controlHost, s, encodeBound(slotNo, ShmStatus.TOKEN, (err as Error).message));
    }
    const claim = this.#book.claim(target, { session: s, no: slotNo });
    if (!claim.ok) {
      const status = claim.reason === 'not_waiting' ? ShmStatus.NOT_WAITING : target.identity.name !== s.identity.name ? ShmStatus.POLICY : ShmStatus.NO_SESSION;
      return failSlot(status, status === ShmStatus.POLICY ? 'identity' : claim.reason, claim.detail);
    }
    try {
      s.region!.openSlot(slotNo, slot.size[0]);
    } catch (err) {
      return failSlot(ShmStatus.RESOURCE, 'resource', `cannot open slot ${slotNo}: ${(err as Error).message}`);
    }
    if (this.#link(s, slotNo, slot, claim.target)) reply(ShmStatus.OK, undefined, '');
    else reply(ShmStatus.NOT_WAITING, 'not_waiting', `socket ${target.id} could not be linked`);
  }

  /** Hand the slot to the socket as its native data channel; false (slot freed) if the socket would not take it. */
  #link(s: Session, slotNo: number, slot: Slot, target: NonNullable<Slot['target']>): boolean {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.state = 'open';
    slot.target = target;
    try {
      target.attach(slotChannel(this.#channelHost, s, slotNo, slot));
    } catch (err) {
      trace(`session ${s.id}: socket ${target.id} refused slot ${slotNo}: ${(err as Error).message}`);
      this.#closeSlot(s, slotNo, slot);
      return false;
    }
    this.o.metrics.recordAttach('shm', 'ok');
    trace(`session ${s.id}: slot ${slotNo} carries socket ${target.id}`);
    return true;
  }

  /** RELEASE / ABORT from the client. */
  #release(s: Session, slotNo: number, abort: boolean): void {
    const slot = s.slots.get(slotNo);
    if (!slot) return; // already closed (e.g. a RELEASE after an END): nothing to do
    slot.released = true;
    // Unused (pre-issued, or reserved and never bound; a Connect naming it meanwhile is answered unlinked): freed now.
    if (slot.state === 'reserved' || slot.state === 'issued') return this.#book.free(slot);
    if (slot.linkEnded) return this.#closeSlot(s, slotNo, slot);
    // A graceful release waits for the link to flush what the client sent; an abort closes it now.
    // An abort is a reset for the host peer too (the client's side was reset or dropped).
    if (abort) void slot.link?.close({ reset: true }).catch(() => {});
  }

  /** Close an open slot (pages punched out) and free it. */
  #closeSlot(s: Session, slotNo: number, slot: Slot): void {
    if (slot.state === 'open' && s.region && s.state === 'live') {
      try {
        s.region.closeSlot(slotNo);
      } catch (err) {
        this.o.logger.warn({ session: s.id, slot: slotNo, err: (err as Error).message }, 'shm: closing a slot failed');
      }
    }
    this.#book.free(slot);
  }

  // ---- session end --------------------------------------------------------------

  #onRegionEvent(s: Session, e: RegionEvent): void {
    if (e.type !== 'corrupt') return;
    this.#corrupt.add(1);
    const sockets = [...s.slots.values()].flatMap((sl) => (sl.target ? [sl.target.id] : []));
    this.o.logger.error(
      { session: s.id, identity: s.identity.name, peerPid: s.peer.pid, peerUid: s.peer.uid, sockets, code: e.code },
      'shm session corrupted by its client: its sockets end with ERR_SOCKGATE_RING_CORRUPT',
    );
    void this.#endSession(s, 'its client corrupted the shared memory', 'debug');
  }

  /** End a session: abort its links, close its slots, control stream, connection, region and doorbells. Idempotent. */
  #endSession(s: Session, why: string, level: 'debug' | 'warn' | 'error'): Promise<void> {
    if (s.teardown) return s.teardown;
    const wasLive = s.state === 'live';
    this.#book.retire(s);
    s.teardown = (async () => {
      if (wasLive) this.o.logger[level]({ session: s.id, identity: s.identity.name, peerPid: s.peer.pid }, `shm session ended: ${why}`);
      // Let the last control messages (END with the reason) reach the client's ring before the session goes.
      const flushBy = Date.now() + CONTROL_FLUSH_MS;
      while (wasLive && s.ctlLink && s.ctlDelivered < s.ctlWritten && Date.now() < flushBy) await new Promise((r) => setTimeout(r, 2));
      const links = [...s.slots.values()].flatMap((sl) => (sl.link ? [sl.link] : []));
      if (s.ctlLink) links.push(s.ctlLink);
      await Promise.all(
        links.map((l) =>
          Promise.race([
            l.close().catch(() => undefined),
            new Promise((r) => setTimeout(r, END_WAIT_MS).unref()),
          ]),
        ),
      );
      s.ctlSock?.destroy();
      if (s.conn !== undefined) {
        this.#byConn.delete(s.conn);
        try {
          this.#listener?.closeConn(s.conn);
        } catch {
          // the listener is closed
        }
        s.conn = undefined;
      }
      this.#book.remove(s);
      if (s.region) {
        const id = s.region.id;
        this.#byRegion.delete(id);
        this.o.hub.offRegion(id);
        // The pump thread may still hold the region or a doorbell for a moment after the links and
        // offRegion (EBUSY): each close is retried, bounded, so none is skipped (a leak of their fds).
        const busy = (err: unknown) => this.o.native.nativeCode(err) === 'EBUSY';
        const { region, gwBell, clBell } = s;
        for (const close of [() => region.close(), () => gwBell?.close(), () => clBell?.close()]) {
          try {
            await whenReleased(close, busy);
          } catch (err) {
            this.o.logger.warn({ session: s.id, err: (err as Error).message }, 'shm: releasing a session failed');
          }
        }
      }
    })();
    return s.teardown;
  }

  /** Stop taking new sessions, slots and attaches; running sockets keep their links (the socket table drains them). */
  async close(): Promise<void> {
    this.#closing = true;
  }

  /**
   * After the socket table drained (or was destroyed): end every session,
   * close the listener and remove its socket file. Idempotent.
   */
  async shutdown(): Promise<void> {
    this.#closing = true;
    await Promise.all([...new Set([...this.#book.byId.values(), ...this.#byRegion.values()])].map((s) => this.#endSession(s, 'the gateway stopped', 'debug')));
    if (this.#listener) {
      this.o.hub.offListener(this.#listener.id);
      try {
        this.#listener.close();
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message }, 'shm: closing the attach listener failed');
      }
      this.#listener = undefined;
      removeStaleSocket(this.#path, this.#pathIno);
    }
  }
}