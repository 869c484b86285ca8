/**
 * Live failover onto a new rdma connection, the gateway's side (native/RDMA.md
 * "Moving to a new RDMA connection"). A connect request with the MOVE flag
 * carries a resume token instead of an attach token: it is accepted when that
 * token names a socket the resume book holds (or still tracks: its client saw
 * the fault first, so its connection is failed here too), as a session of that
 * socket's identity that is never offered to new sockets. Each RESUME BIND on
 * it names a socket by its resume token with the client's position; the book
 * checks it as for a tcp resume ([outAcked, outSent], else refused); the slot is
 * then linked to the socket's host descriptor, our bytes from the client's
 * position go first and BOUND carries our position. A refusal is the slot's
 * CLOSE: the client resumes that socket on the tcp data port instead.
 */
import type { RawRdmaConn, RawRdmaListener, RdmaRegionOptions } from '../native/index.js';
import type { Logger } from '../native/log.js';
import type { RdmaEvent } from '../native/pump-hub.js';
import { tracer } from '../native/trace.js';
import { TransportKind } from '../proto/gen/sockgate/v1/transport.js';
import type { NativeLink, NativeLinkEvents } from './data-channel.js';
import type { ResumeBook } from './rdma-resume.js';
import type { RdmaSession, RdmaSessions, RdmaSlot } from './rdma-sessions.js';
import type { RdmaLinkResume } from '../native/index.js';
import type { StreamSocket } from './socket-table.js';

const trace = tracer('rdma');

type Refusal = 'token' | 'busy' | 'resource' | 'shutting_down';

export interface MoveDeps {
  book: ResumeBook;
  sessions: RdmaSessions;
  logger: Logger;
  native: { closeFd(fd: number, reset?: boolean): void; translateError(err: unknown): unknown };
  closing(): boolean;
  region(): RdmaRegionOptions;
  refuse(reason: Refusal, detail: string, extra?: Record<string, unknown>): void;
  /** The accepted connection becomes the session's (events, establishment deadline). */
  connected(s: RdmaSession, conn: RawRdmaConn, peer: string): void;
  /** Link the slot to `fd` (owned from here, closed on failure) and run it. */
  startLink(s: RdmaSession, slot: RdmaSlot, fd: number, events: NativeLinkEvents, resume: RdmaLinkResume): NativeLink;
  /** Refuse a slot (CLOSE to the client); its number is reused after its slotEnd. */
  closeUnlinked(s: RdmaSession, slot: RdmaSlot): void;
}

export class RdmaMoves {
  constructor(private readonly d: MoveDeps) {}

  /** A connect request with MOVE: `e.token` is a resume token. */
  request(listener: RawRdmaListener, e: Extract<RdmaEvent, { event: 'request' }>): void {
    const reject = (reason: Refusal, detail: string) => {
      this.d.refuse(reason, detail, { peer: e.peer });
      try {
        listener.reject(e.conn);
      } catch {
        // the listener is closing
      }
    };
    if (this.d.closing()) return reject('shutting_down', 'the gateway is stopping');
    const r = this.d.book.movable(e.token);
    if (!r?.identity) return reject('token', 'a move connection names no socket that can resume (its resume token)');
    const s = this.d.sessions.adopt(r.identity);
    if (typeof s === 'string') return reject('resource', `no session for the moved sockets of ${r.identity.name}: ${s}`);
    let conn: RawRdmaConn;
    try {
      conn = listener.accept(e.conn, this.d.region());
    } catch (err) {
      this.d.sessions.remove(s);
      return reject('resource', `cannot accept the move connection: ${(this.d.native.translateError(err) as Error).message}`);
    }
    this.d.connected(s, conn, e.peer);
    trace(`session ${s.id}: move connection ${conn.id} from ${e.peer} accepted (for ${r.socketId})`);
  }

  /** A RESUME BIND on a live session: slot `no` resumes the socket of resume token `token` at the client's `position`. */
  bind(s: RdmaSession, no: number, token: Buffer, position: bigint): void {
    const extra = { session: s.id, slot: no };
    if (s.slots.has(no)) return this.d.refuse('busy', `slot ${no} of session ${s.id} is ${s.slots.get(no)!.state}`, extra);
    const slot = this.d.sessions.hold(s, no);
    if (!slot) return this.d.refuse('busy', `slot ${no} is not a slot of session ${s.id}`, extra);
    if (this.d.closing()) {
      this.d.refuse('shutting_down', 'the gateway is stopping', extra);
      return this.d.closeUnlinked(s, slot);
    }
    // A token is a secret, but a move session carries only its own identity's sockets (the suspension stays for its owner).
    const owner = this.d.book.ownerOf(token);
    if (owner && owner.name !== s.identity.name) {
      this.d.refuse('token', `moved socket on slot ${no}: not a socket of ${s.identity.name}`, extra);
      return this.d.closeUnlinked(s, slot);
    }
    this.d.book.acceptSlot(token, position, {
      refuse: (detail) => {
        this.d.refuse('token', `moved socket on slot ${no}: ${detail}`, extra);
        if (s.slots.get(no) === slot) this.d.closeUnlinked(s, slot);
      },
      take: (r, susp, resend) => {
        if (s.slots.get(no) !== slot || s.state !== 'live') {
          // The move connection went meanwhile: the socket ends as it would have.
          this.d.native.closeFd(susp.hostFd, true);
          this.d.book.record('refused', 'gone');
          return r.expired({ reason: 'error', errno: 0, code: susp.cause });
        }
        slot.resumeToken = token;
        slot.target = r.target as StreamSocket | undefined;
        // Bytes posted before the fault were counted then: only what is new from the host counts now.
        let counted = Number(susp.outSent - position);
        const events: NativeLinkEvents = {
          ...r.events,
          progress: (toHost, toClient) => {
            const skip = Math.min(counted, toClient);
            counted -= skip;
            r.events.progress(toHost, toClient - skip);
          },
        };
        let link: NativeLink;
        try {
          link = this.d.startLink(s, slot, susp.hostFd, events, { position: susp.inPos, outBase: position, bytes: Buffer.from(resend) });
        } catch (err) {
          this.d.book.record('refused', 'link');
          this.d.logger.warn({ socket: r.socketId, err: (err as Error).message }, 'rdma failover: the new rdma slot did not link');
          this.d.closeUnlinked(s, slot);
          return r.expired({ reason: 'error', errno: 0, code: susp.cause });
        }
        this.d.book.record('resumed', susp.cause, 'rdma');
        this.d.logger.info(
          { socket: r.socketId, cause: susp.cause, session: s.id, slot: no, in: String(susp.inPos), out: String(position), resent: resend.length },
          'rdma failover: socket resumed on a new rdma connection',
        );
        r.moved(
          { ended: link.ended, close: () => link.close(), shutdownHost: (rd, wr) => link.shutdownHost!(rd, wr), setHostOption: (o) => link.setHostOption!(o) },
          susp.cause,
          TransportKind.TRANSPORT_KIND_RDMA,
        );
      },
    });
  }
}
