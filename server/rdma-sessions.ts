/**
 * The gateway's rdma sessions and slot reservations: which client session
 * (and identity) owns which slots, reserving a slot at negotiation, tying it
 * to the socket its token was issued to, and freeing it. No native state:
 * unit-tested on any host (server/transport-rdma.ts drives it; native/RDMA.md
 * and that file's header describe the protocol).
 */
import { randomBytes } from 'node:crypto';
import type { RawRdmaConn } from '../native/index.js';
import { tracer } from '../native/trace.js';
import { DeclineReason } from '../proto/gen/sockgate/v1/transport.js';
import { SESSION_ID_RE } from '../proto/shm-wire.js';
import type { Identity } from './policy.js';
import type { GatewaySocket, StreamSocket } from './socket-table.js';
import type { NativeLinkEnd, NativeLinkEvents } from './transport.js';

const trace = tracer('rdma');

/** Client input echoed in a decline detail is cut to this length. */
const MAX_ECHO = 64;

export function echo(s: string): string {
  return s.length > MAX_ECHO ? `${JSON.stringify(s.slice(0, MAX_ECHO))}...` : JSON.stringify(s);
}

/** What a running slot link reports to, and how its end is settled. */
export interface SlotLink {
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
