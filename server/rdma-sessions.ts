/**
 * The gateway's rdma sessions: the one slot-session book (server/slot-session.ts)
 * with rdma's mechanics (slots 0..slots-1, max_sessions limits) and its
 * per-session state (the RC connection, BINDs that beat `established`).
 * No native state: unit-tested on any host (server/transport-rdma.ts drives
 * it; native/RDMA.md "Gateway sessions" describes the protocol).
 */
import type { RawRdmaConn } from '../native/index.js';
import type { Identity } from './policy.js';
import { SessionSlot, SlotBook, SlotSession, echo } from './slot-session.js';
import type { HostOption, NativeLinkEnd, NativeLinkEvents } from './transport.js';

/** Live failover: the data-port relay a resumed socket continues on (server/rdma-resume.ts). */
export interface MovedLink {
  readonly ended: Promise<NativeLinkEnd>;
  close(): Promise<NativeLinkEnd>;
  shutdownHost(read: boolean, write: boolean): void;
  setHostOption(o: HostOption): void;
}

export { echo };

/** What a running slot link reports to, and how its end is settled. */
export interface SlotLink {
  readonly events: NativeLinkEvents;
  readonly ended: Promise<NativeLinkEnd>;
  settled: boolean;
  /** closeSlot() was asked for. */
  closing: boolean;
  /** Live failover: the connection failed under the socket, which waits for its resume (the slot is gone). */
  suspended?: boolean;
  /** Live failover: the socket continues on the tcp data port through this relay. */
  moved?: MovedLink;
  settle(end: NativeLinkEnd): void;
}

/** A slot link not settled yet. */
export function newSlotLink(events: NativeLinkEvents): SlotLink {
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

/** One socket slot of an rdma session (linking: the first socket, waiting for `established`). */
export class RdmaSlot extends SessionSlot<RdmaSession> {
  link: SlotLink | undefined;
  /** Live failover: the token a resume names this slot's socket by (from the short attach token it was linked with). */
  resumeToken: Buffer | undefined;
}

/** A client session: at most one RC connection, and its slots. */
export class RdmaSession extends SlotSession<RdmaSlot> {
  conn: RawRdmaConn | undefined;
  /** The connecting peer, as rdma_cm reports it. */
  peer = '';
  /** BINDs that arrived before `established` (a receive completion can beat the cm event), handled after it. */
  early: Array<{ slot: number; token: Buffer; position?: bigint }> = [];
  /** A socket's slot was ended by the peer's disconnect (rather than having ended before it). */
  cutOff = false;
}

export interface RdmaSessionLimits {
  /** Slots per connection. */
  slots: number;
  maxSessions: number;
  maxSessionsPerIdentity: number;
  /** How long a reservation waits for its connect request or bind. */
  reservationMs: number;
}

/** The rdma session table: the slot-session book with rdma's numbering and limits. */
export class RdmaSessions extends SlotBook<RdmaSession, RdmaSlot> {
  constructor(limits: RdmaSessionLimits) {
    super({
      label: 'rdma',
      firstSlot: 0,
      slots: limits.slots,
      slotsKey: 'transports.rdma.slots',
      maxSessions: limits.maxSessions,
      maxSessionsPerIdentity: limits.maxSessionsPerIdentity,
      reservationMs: limits.reservationMs,
      requiredIdField: 'RdmaOffer.session_id',
      newSession: (id: string, identity: Identity) => new RdmaSession(id, identity),
      newSlot: (session: RdmaSession, no: number) => new RdmaSlot(session, no),
    });
  }
}
