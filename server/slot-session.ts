/**
 * The one slot-session protocol, gateway side, for every transport that
 * carries many sockets over one client session (shm and rdma): reserve a slot
 * at negotiation (overflowing into a further session of the same client when
 * the named one is full), tie the reservation to the socket its token is
 * issued to, claim it once when the token is redeemed (the session's first
 * socket at attach, later ones with BIND), free it on release or expiry, and
 * forget sessions; and pre-issue slots of a live session in batches, which a
 * later Connect of the same identity names (take) so its socket is linked
 * before the Connect answers. Each transport supplies only its mechanics (slot numbering,
 * limits, what a reservation charges) through SlotRules, and its own
 * subclasses of SlotSession / SessionSlot for its state (region, connection).
 * native/SHM.md and native/RDMA.md describe the protocol.
 */
import { randomBytes } from 'node:crypto';
import type { Counter, Meter } from '@opentelemetry/api';
import { RateLimitedWarn, type Logger } from '../native/log.js';
import { AttachTokenError, type RedeemFailure } from '../proto/errors.js';
import { tracer } from '../native/trace.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason } from '../proto/gen/sockgate/v1/transport.js';
import { SESSION_ID_RE } from '../proto/shm-wire.js';
import type { Identity } from './policy.js';
import { StreamSocket, type GatewaySocket } from './socket-table.js';
import type { AttachRegistry } from './attach.js';
import type { GatewayMetrics } from './telemetry.js';

const trace = tracer('attach');

/** A reserved slot outlives its token by this much (an attach or bind may be in flight when the token expires). */
export const RESERVATION_GRACE_MS = 2_000;
/** How long teardown waits for a slot's or a session's end event before giving up on it. */
export const END_WAIT_MS = 5_000;

/** Client input echoed in a decline detail is cut to this length. */
const MAX_ECHO = 64;

export function echo(s: string): string {
  return s.length > MAX_ECHO ? `${JSON.stringify(s.slice(0, MAX_ECHO))}...` : JSON.stringify(s);
}

/**
 * issued: pre-issued to the session's client, unused (no timer: bounded per
 * session, freed when given back or with the session); reserved: negotiated,
 * waiting for its attach or bind (or, taken from the pre-issued ones, for its
 * Connect to link it); linking: claimed, waiting for the session's connection
 * (rdma's first socket); open: carries its socket; closing: being closed, its
 * number not reusable yet.
 */
export type SlotState = 'issued' | 'reserved' | 'linking' | 'open' | 'closing';

/** One socket slot of a session. */
export class SessionSlot<S extends SlotSession<any> = SlotSession<any>> {
  state: SlotState = 'reserved';
  /** Expiry of a reservation. */
  timer: NodeJS.Timeout | undefined;
  /** The socket the reservation was issued to (Transport.issued). */
  socket: GatewaySocket | undefined;
  /** The socket riding (or about to ride) the slot. */
  target: StreamSocket | undefined;
  /** Taken from the pre-issued ones by a Connect (take): a Connect that fails gives it back (giveBack). */
  preissued = false;
  constructor(
    readonly session: S,
    readonly no: number,
  ) {}
}

/**
 * pending: reserved, not attached yet; connecting: its connection accepted,
 * not established (rdma); live: attached; refused: its attach was refused
 * (remembered a while, offers naming it declined); closed: forgotten.
 */
export type SessionState = 'pending' | 'connecting' | 'live' | 'refused' | 'closed';

/** A client session: its slots, and where it overflows. */
export class SlotSession<Sl extends SessionSlot<any> = SessionSlot<any>> {
  state: SessionState = 'pending';
  /** Slots by number; absent = free. */
  readonly slots = new Map<number, Sl>();
  /** Where the next free-slot search starts. */
  nextSlot = -1;
  /** Slots in state 'issued' (pre-issued, unused). */
  preissued = 0;
  /** Where offers naming this session go once all its slots are busy: a further session of the same client. */
  overflow: SlotSession<Sl> | undefined;
  /** The reservation whose client was told new_session first (it opens the connection). */
  connector: Sl | undefined;
  /** Refused: why (offers naming the session are declined with it). */
  refusal = '';
  /** The transport's timer on the session (establishment deadline, refusal memory). */
  timer: NodeJS.Timeout | undefined;
  /** Left the book for good (remove()). */
  removed = false;
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

/** What every session transport (shm, rdma) is built with, besides its own config and pump. */
export interface SessionTransportOptions {
  /** Attach token lifetime (a reservation lives as long, plus a grace). */
  tokenTtlMs: number;
  native: typeof import('../native/index.js');
  registry: AttachRegistry<GatewaySocket>;
  metrics: GatewayMetrics;
  meter: Meter;
  logger: Logger;
}

/** What a transport supplies: its slot numbering, limits and charges. */
export interface SlotRules<S extends SlotSession<Sl>, Sl extends SessionSlot<S>> {
  /** The transport's name in details and config keys ('shm', 'rdma'). */
  readonly label: string;
  /** Slot numbers are first .. first+slots-1 (shm keeps 0 for its control slot). */
  readonly firstSlot: number;
  readonly slots: number;
  /** The config key of `slots` (named in a decline). */
  readonly slotsKey: string;
  readonly maxSessions: number;
  readonly maxSessionsPerIdentity: number;
  /** How long a reservation waits for its attach or bind. */
  readonly reservationMs: number;
  /** An offer without a session id: a fresh id (shm), or a decline naming the field (rdma: 'RdmaOffer.session_id'). */
  readonly requiredIdField?: string;
  newSession(id: string, identity: Identity): S;
  newSlot(session: S, no: number): Sl;
  /** Charge a reservation (`created`: with a new session); the decline detail if it does not fit, else ''. */
  charge?(who: string, session: S, created: boolean): string;
  /** A slot left the book: give back what it held. */
  slotFreed?(slot: Sl): void;
  /** A session left the book (or was refused): give back what it still holds. */
  sessionReleased?(session: S): void;
}

export type Reservation<S, Sl> =
  | { ok: true; session: S; slot: Sl; newSession: boolean }
  | { ok: false; reason: DeclineReason; detail: string };

/** What a redeemed token may claim, or why not. */
export type Claim<Sl> = { ok: true; slot: Sl; target: StreamSocket } | { ok: false; reason: 'no_session' | 'not_waiting'; detail: string };

/** The session book: ids, owners, reservations and their expiry, the socket tie, and the limits. No native state. */
export class SlotBook<S extends SlotSession<Sl>, Sl extends SessionSlot<S>> {
  /** Every session (pending, connecting, live, refused) by id; ids are unique across identities. */
  readonly byId = new Map<string, S>();
  readonly #perIdentity = new Map<string, number>();
  /** The reservation each issued socket holds. */
  readonly #bySocket = new WeakMap<GatewaySocket, Sl>();

  constructor(protected readonly rules: SlotRules<S, Sl>) {}

  get size(): number {
    return this.byId.size;
  }

  /** Sessions `identity` holds. */
  countOf(identity: string): number {
    return this.#perIdentity.get(identity) ?? 0;
  }

  /**
   * Reserve a slot of session `offered` for `identity` (creating the session
   * if it has none by that id; another identity's id is never shared: a fresh
   * one). When every slot of it is busy, the slot comes from its overflow
   * chain, or a new session at the chain's end (new_session, fresh id) while
   * the session limits allow.
   */
  reserve(identity: Identity, offered: string): Reservation<S, Sl> {
    const decline = (reason: DeclineReason, detail: string): Reservation<S, Sl> => ({ ok: false, reason, detail });
    const r = this.rules;
    if (offered === '' && r.requiredIdField) return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, `the ${r.label} offer names no session (${r.requiredIdField}: 8..64 of [A-Za-z0-9_-], picked by the client)`);
    if (offered !== '' && !SESSION_ID_RE.test(offered)) return decline(DeclineReason.DECLINE_REASON_PEER_DECLINED, `session id ${echo(offered)} is malformed (8..64 of [A-Za-z0-9_-])`);
    const who = identity.name;
    let session = offered === '' ? undefined : this.byId.get(offered);
    let id = offered === '' ? this.#freshId() : offered;
    if (session && session.identity.name !== who) {
      // Someone else's session: never share it; this identity gets one of its own.
      session = undefined;
      id = this.#freshId();
    }
    if (session?.state === 'refused') return decline(DeclineReason.DECLINE_REASON_POLICY, session.refusal);
    let created: S | undefined;
    let parent: S | undefined;
    if (!session) {
      const full = this.#noRoom(who);
      if (full) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, full);
      created = session = r.newSession(id, identity);
    } else if (this.#full(session)) {
      // Busy: the first of its overflow chain with a free slot, else a new session at the chain's end.
      const named = session;
      let last = session;
      while (last.overflow && usable(last.overflow) && this.#full(last)) last = last.overflow as S;
      if (!this.#full(last)) {
        session = last;
      } else {
        const full = this.#noRoom(who);
        if (full) {
          return decline(
            DeclineReason.DECLINE_REASON_RESOURCE_LIMIT,
            `every one of the ${r.slots} slots of ${r.label} session ${named.id}${named !== last ? ' and of its overflow sessions' : ''} is busy (${r.slotsKey}), and ${full}`,
          );
        }
        created = session = r.newSession(this.#freshId(), identity);
        parent = last;
      }
    }
    const no = this.#freeSlot(session);
    if (no < 0) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, `every one of the ${r.slots} slots of ${r.label} session ${session.id} is busy (${r.slotsKey})`);
    const refusal = r.charge?.(who, session, created !== undefined) ?? '';
    if (refusal) return decline(DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, refusal);
    if (created) {
      if (parent) parent.overflow = created;
      this.byId.set(created.id, created);
      this.#perIdentity.set(who, this.countOf(who) + 1);
      trace(`${who}: new pending ${r.label} session ${created.id}${created.id !== offered ? ` (for ${echo(offered)}: new, another identity's, or all its slots busy)` : ''}`);
    }
    const slot = this.#add(session, no);
    const newSession = session.state === 'pending' && session.connector === undefined;
    if (newSession) session.connector = slot;
    this.arm(slot);
    return { ok: true, session, slot, newSession };
  }

  /** A session the gateway opens itself (an rdma move connection, server/rdma-move.ts): counted against the limits, never offered. The refusal if it does not fit. */
  adopt(identity: Identity): S | string {
    const full = this.#noRoom(identity.name);
    if (full) return full;
    const s = this.rules.newSession(this.#freshId(), identity);
    this.byId.set(s.id, s);
    this.#perIdentity.set(identity.name, this.countOf(identity.name) + 1);
    return s;
  }

  /** A reservation not claimed within the rules' reservationMs is freed. */
  arm(slot: Sl): void {
    clearTimeout(slot.timer);
    slot.timer = setTimeout(() => {
      if (slot.state !== 'reserved') return;
      trace(`${this.rules.label} session ${slot.session.id}: reservation of slot ${slot.no} expired`);
      this.free(slot);
    }, this.rules.reservationMs);
    slot.timer.unref();
  }

  /**
   * Pre-issue up to `want` slots of live session `s` to its client, so that
   * unused ones never exceed `max`; each takes a free number (it counts
   * against the session's slots). Fewer (or none) when they run out. Returns
   * their numbers. An unused slot holds no memory: it is charged when taken.
   */
  preissue(s: S, want: number, max: number): number[] {
    const out: number[] = [];
    if (s.state !== 'live' || s.removed) return out;
    for (let n = Math.min(want, max - s.preissued); n > 0; n--) {
      const no = this.#freeSlot(s);
      if (no < 0) break;
      this.#add(s, no).state = 'issued';
      s.preissued++;
      out.push(no);
    }
    if (out.length) trace(`${this.rules.label} session ${s.id}: pre-issued slots ${out.join(',')}`);
    return out;
  }

  /**
   * A Connect of `identity` names slot `no` of session `sessionId`: take it
   * (reserved for that Connect, tied to nobody yet, charged like a
   * reservation) if it is pre-issued to a live session of that identity and
   * unused; else why not ('resource': the charge does not fit, the slot stays
   * pre-issued). Another identity's session reads as no session (nothing
   * about it is told).
   */
  take(identity: Identity, sessionId: string, no: number): { ok: true; session: S; slot: Sl } | { ok: false; why: 'refused' | 'resource'; detail: string } {
    const label = this.rules.label;
    const s = SESSION_ID_RE.test(sessionId) ? this.byId.get(sessionId) : undefined;
    if (!s || s.identity.name !== identity.name || s.state !== 'live') {
      return { ok: false, why: 'refused', detail: `${label} slot ${no} was not pre-issued to identity "${identity.name}": it holds no live ${label} session ${echo(sessionId)}` };
    }
    const slot = s.slots.get(no);
    if (!slot) return { ok: false, why: 'refused', detail: `${label} slot ${no} of session ${s.id} is not pre-issued (never, or given back)` };
    if (slot.state !== 'issued') return { ok: false, why: 'refused', detail: `${label} slot ${no} of session ${s.id} is in use` };
    const full = this.rules.charge?.(identity.name, s, false);
    if (full) return { ok: false, why: 'resource', detail: full };
    slot.state = 'reserved';
    slot.preissued = true;
    s.preissued--;
    return { ok: true, session: s, slot };
  }

  /** The Connect that took a pre-issued slot ended before linking it (refused, failed): the slot is its client's again. */
  giveBack(slot: Sl): void {
    const s = slot.session;
    if (s.slots.get(slot.no) !== slot || slot.state !== 'reserved' || !slot.preissued || slot.socket !== undefined) return;
    this.rules.slotFreed?.(slot);
    slot.state = 'issued';
    slot.preissued = false;
    s.preissued++;
  }

  /** Free pre-issued slot `no` of `s` if it is still unused (an answer carrying it never reached its client). */
  unissue(s: S, no: number): void {
    const slot = s.slots.get(no);
    if (slot?.state === 'issued') this.free(slot);
  }

  /** Tie the reservation (session id, slot) to the socket its token was issued to. False if there is none. */
  issued(socket: GatewaySocket, sessionId: string, slotNo: number): boolean {
    const slot = this.byId.get(sessionId)?.slots.get(slotNo);
    if (!slot || slot.state !== 'reserved' || slot.socket !== undefined || slot.session.identity.name !== socket.identity.name) return false;
    // A socket that negotiates again (its earlier attach failed) gives up its earlier reservation.
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
    if (slot?.preissued) this.giveBack(slot);
    else if (slot && slot.state === 'reserved' && slot.socket === undefined) this.free(slot);
  }

  /** The reservation `socket` holds, if any. */
  reservationOf(socket: GatewaySocket): Sl | undefined {
    const slot = this.#bySocket.get(socket);
    return slot && slot.session.slots.get(slot.no) === slot && slot.session.state !== 'closed' ? slot : undefined;
  }

  /** A socket left the table: a reservation it still holds (it never attached) is freed at once. */
  socketRemoved(socket: GatewaySocket): void {
    const slot = this.reservationOf(socket);
    if (slot?.state === 'reserved') this.free(slot);
  }

  /**
   * The one attach check, after the token was redeemed for `target`: it holds
   * a reservation (the one `named`, when the attach names one) and waits for
   * its data channel. On a refusal the reservation it holds is freed (its
   * token is spent: it can never attach with it), unless it is the slot
   * named, which the transport ends its own way. The transport checks its
   * session's own state after.
   */
  claim(target: GatewaySocket, named?: { session: SlotSession<any> | undefined; no: number }): Claim<Sl> {
    const slot = this.reservationOf(target);
    const refuse = (reason: 'no_session' | 'not_waiting', detail: string): Claim<Sl> => {
      const isNamed = named !== undefined && slot?.session === named.session && slot?.no === named.no;
      if (slot?.state === 'reserved' && !isNamed) this.free(slot);
      return { ok: false, reason, detail };
    };
    if (!slot || slot.state !== 'reserved') return refuse('no_session', `socket ${target.id} holds no ${this.rules.label} reservation (it expired, or the socket attached already)`);
    if (named && (slot.session !== named.session || slot.no !== named.no)) {
      return refuse('no_session', `socket ${target.id} did not reserve slot ${named.no} of ${this.rules.label} session ${named.session?.id ?? '(none)'}`);
    }
    if (!(target instanceof StreamSocket) || target.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) return refuse('not_waiting', `socket ${target.id} is not waiting for an attach`);
    return { ok: true, slot, target };
  }

  /** Take a slot number that is not reserved but must not be reused until its end (a refused bind). */
  hold(session: S, no: number): Sl | undefined {
    const r = this.rules;
    if (no < r.firstSlot || no >= r.firstSlot + r.slots || session.slots.has(no)) return session.slots.get(no);
    const slot = r.newSlot(session, no);
    slot.state = 'closing';
    session.slots.set(no, slot);
    return slot;
  }

  /** Free a slot. A pending session left without reservations is forgotten. */
  free(slot: Sl): void {
    const s = slot.session;
    clearTimeout(slot.timer);
    slot.timer = undefined;
    this.untie(slot);
    if (s.slots.get(slot.no) !== slot) return;
    s.slots.delete(slot.no);
    if (s.connector === slot) s.connector = undefined;
    // An unused pre-issued slot was never charged.
    if (slot.state === 'issued') s.preissued--;
    else this.rules.slotFreed?.(slot);
    if (s.state === 'pending' && s.slots.size === 0) this.remove(s);
  }

  /**
   * Refuse a session at its attach: its reservations go, and it is remembered
   * for `memoryMs` so that offers naming it are declined with `why` at once.
   */
  refuse(s: S, why: string, memoryMs: number): void {
    s.state = 'refused';
    s.refusal = why;
    for (const slot of [...s.slots.values()]) this.free(slot);
    this.rules.sessionReleased?.(s);
    clearTimeout(s.timer);
    s.timer = setTimeout(() => this.remove(s), memoryMs);
    s.timer.unref();
  }

  /** Stop offering a session (its teardown runs on): closed, out of the book, its timers stopped; its slots stay until remove(). */
  retire(s: S): void {
    if (s.state !== 'closed') s.state = 'closed';
    clearTimeout(s.timer);
    for (const slot of s.slots.values()) clearTimeout(slot.timer);
    this.#unindex(s);
  }

  /** Forget a session and its slots. Idempotent. */
  remove(s: S): void {
    if (s.removed) return;
    s.removed = true;
    this.retire(s);
    for (const slot of s.slots.values()) this.untie(slot);
    s.slots.clear();
    s.preissued = 0;
    s.connector = undefined;
    s.overflow = undefined;
    this.rules.sessionReleased?.(s);
    s.markEnded();
  }

  /** Cut the tie between a slot and the socket its reservation was issued to. */
  untie(slot: Sl): void {
    const socket = slot.socket;
    if (!socket) return;
    slot.socket = undefined;
    if (this.#bySocket.get(socket) === slot) this.#bySocket.delete(socket);
  }

  #unindex(s: S): void {
    if (this.byId.get(s.id) !== s) return;
    this.byId.delete(s.id);
    const left = this.countOf(s.identity.name) - 1;
    if (left > 0) this.#perIdentity.set(s.identity.name, left);
    else this.#perIdentity.delete(s.identity.name);
  }

  #freshId(): string {
    let id: string;
    do id = randomBytes(12).toString('base64url');
    while (this.byId.has(id));
    return id;
  }

  #full(s: S): boolean {
    return s.slots.size >= this.rules.slots;
  }

  /** Why `who` may not have another session (max_sessions, max_sessions_per_identity), or '' if it may. */
  #noRoom(who: string): string {
    const { maxSessions, maxSessionsPerIdentity, label } = this.rules;
    if (this.byId.size >= maxSessions) return `the gateway holds ${this.byId.size} of ${maxSessions} ${label} sessions (transports.${label}.max_sessions)`;
    if (this.countOf(who) >= maxSessionsPerIdentity) {
      return `identity "${who}" holds ${this.countOf(who)} of ${maxSessionsPerIdentity} ${label} sessions (transports.${label}.max_sessions_per_identity)`;
    }
    return '';
  }

  /** Put a new slot `no` in `s` (reserved); the next search starts after it. */
  #add(s: S, no: number): Sl {
    const r = this.rules;
    s.nextSlot = r.firstSlot + ((no - r.firstSlot + 1) % r.slots);
    const slot = r.newSlot(s, no);
    s.slots.set(no, slot);
    return slot;
  }

  /** A free slot number, or -1 when every slot is taken. */
  #freeSlot(s: S): number {
    const { firstSlot, slots } = this.rules;
    if (s.slots.size >= slots) return -1;
    const start = s.nextSlot < firstSlot ? 0 : s.nextSlot - firstSlot;
    for (let i = 0; i < slots; i++) {
      const no = firstSlot + ((start + i) % slots);
      if (!s.slots.has(no)) return no;
    }
    return -1;
  }
}

/** Refused attaches and binds: every one counted by reason, logged at most 20 times per 10 s (a hostile client must not flood the log). */
export class SlotRefusals {
  readonly #counter: Counter;
  readonly #log: RateLimitedWarn;
  constructor(
    meter: Meter,
    metric: { name: string; description: string; unit: string },
    logger: Logger,
    private readonly label: string,
  ) {
    this.#counter = meter.createCounter(metric.name, { description: metric.description, unit: metric.unit });
    this.#log = new RateLimitedWarn(logger);
  }

  refuse(reason: string, detail: string, extra: Record<string, unknown> = {}): void {
    this.#counter.add(1, { reason });
    this.#log.warn({ reason, ...extra }, `${this.label} attach refused: ${detail}`);
  }
}

/** How a refused token is counted in sockgate_attach (a token for another transport is an error, not a token failure). */
export function tokenOutcome(err: unknown): Exclude<RedeemFailure, 'wrong_transport'> | 'error' {
  const failure = err instanceof AttachTokenError ? err.failure : 'wrong_token';
  return failure === 'wrong_transport' ? 'error' : failure;
}

/** A session new reservations may still land in. */
function usable(s: SlotSession<any>): boolean {
  return s.state === 'pending' || s.state === 'connecting' || s.state === 'live';
}
