/**
 * The gateway's shm session model: a client's session (one region, its
 * doorbells, control stream and slots) and a socket's slot in it.
 *
 * Sessions. A client keeps one session per gateway: one sealed memfd region,
 * attached once over the Unix attach socket (memfd and doorbells passed with
 * SCM_RIGHTS; the client's pid/uid/gid read with SO_PEERCRED). Every socket of
 * that client rides a slot of the same region. The client picks the session id
 * and offers it with every socket (ShmOffer.session_id); negotiation reserves a
 * slot and answers ShmAttach{session_id, slot, new_session}:
 *
 * - new_session: the session is not attached yet. The client attaches it; the
 *   hello carries the session id, the slot and that socket's attach token
 *   (shm-wire.ts). The gateway redeems the token, checks the peer's identity,
 *   creates the region, opens the control slot and the socket's slot, and
 *   passes the fds.
 * - otherwise: the client presents the socket's token over the session it
 *   holds, as a BIND message on the session's control slot (slot 0, pumped
 *   into a socketpair transport-shm.ts reads). No new connection, mapping or fd.
 *
 * Tokens stay single-use and bound to an identity: a slot is reserved for the
 * identity that negotiated it, in a session of that identity, tied to the
 * socket its token was issued to, and only that socket's token claims it
 * (server/slot-session.ts keeps the book, for rdma too). A session whose
 * attaching uid maps (policy `uids`) to another identity is refused.
 * A session that is full spills into an overflow session the gateway opens
 * for the same client (chained, so concurrent offers share it).
 *
 * Slot lifecycle: reserved (negotiated) -> open (bound, linked) -> the link
 * ends -> the client releases the slot (RELEASE after it read everything, or
 * ABORT when it drops the socket) -> closed (its pages punched out). A link
 * that ends abnormally is reported to the client (END, with the error code).
 */
import type { Socket } from 'node:net';
import type { Eventfd, PumpLink, ShmRegion } from '../native/index.js';
import { SessionSlot, SlotSession } from './slot-session.js';

/** One socket slot of a session ('reserved' by negotiation until bound; 'open' once its rings are open in the region). */
export class Slot extends SessionSlot<Session> {
  /** The ring <-> host-fd link; set while open. */
  link: PumpLink | undefined;
  linkEnded = false;
  /** The client let go of the slot (RELEASE or ABORT). */
  released = false;
  /** Ring bytes per direction charged for this slot (c2g, g2c). */
  readonly size: [number, number];
  /** A growth grant per direction awaiting its ack, and the bytes it charged. */
  readonly growing: [number, number] = [0, 0];
  /** Autotune window: start (ms) and traffic so far. */
  winStart = 0;
  winToFd = 0;
  winToRing = 0;
  winStalls = 0;
  constructor(session: Session, no: number, ringBytes: number) {
    super(session, no);
    this.size = [ringBytes, ringBytes];
  }
}

/** A client session: one region, its doorbells and control stream, and its slots (the book is server/slot-session.ts). */
export class Session extends SlotSession<Slot> {
  /** TS-charged ring bytes of this session (slots and control slot). */
  charged = 0;
  region: ShmRegion | undefined;
  gwBell: Eventfd | undefined;
  clBell: Eventfd | undefined;
  /** Attach connection (listener conn id); undefined once closed. */
  conn: number | undefined;
  peer = { pid: 0, uid: 0, gid: 0 };
  ctlLink: PumpLink | undefined;
  ctlSock: Socket | undefined;
  /** Control bytes written to the socketpair, and delivered by the pump into the client's ring. */
  ctlWritten = 0;
  ctlDelivered = 0;
  /** Settles when the teardown is complete. */
  teardown: Promise<void> | undefined;
}
