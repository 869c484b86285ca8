/**
 * Pre-issued rdma slots (native/RDMA.md "Pre-issued slots"), the gateway
 * side: slots of a connected session handed to its client in batches
 * (RdmaAttach.preissued_slots, at most transports.rdma.max_preissued_slots
 * unused per session), one of which a later Connect names (RdmaOffer.slot);
 * the gateway links the new host socket to it before the Connect answers
 * (RdmaAttach.linked), so no BIND/BOUND round trip follows. The book calls
 * are the generic slot-session ones (server/slot-session.ts), as for shm.
 */
import { DeclineReason, type Accepted, type RdmaAttach, type RdmaOffer } from '../proto/gen/sockgate/v1/transport.js';
import { SlotRefusedError } from '../proto/errors.js';
import { resumeToken } from '../proto/resume-wire.js';
import { SHORT_TOKEN_BYTES } from '../proto/attach-limits.js';
import { tracer } from '../native/trace.js';
import type { Identity } from './policy.js';
import type { RdmaSession, RdmaSessions, RdmaSlot } from './rdma-sessions.js';
import type { GatewaySocket, StreamSocket } from './socket-table.js';
import type { OfferOutcome } from './transport.js';

const trace = tracer('rdma');

export type Answer = Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>;
/** What an answer says about its slot and the pre-issued ones (the rest is the transport's). */
export type SlotAnswer = Pick<RdmaAttach, 'sessionId' | 'slot' | 'newSession' | 'linked' | 'preissuedSlots'>;

export interface RdmaPreissueDeps {
  sessions: RdmaSessions;
  /** transports.rdma.max_preissued_slots. */
  max: number;
  closing(): boolean;
  /** A Connect named a slot it may not use: counted and logged. */
  refused(detail: string, extra: Record<string, unknown>): void;
  /** Hand the slot to the socket as its native data channel (the transport's link, as after a BIND). */
  link(s: RdmaSession, slot: RdmaSlot, target: StreamSocket): boolean;
  /** The attach token the socket was issued is spent (linked without an attach). */
  revoke(socket: GatewaySocket): void;
}

export class RdmaPreissue {
  /** Pre-issued slots taken by a Connect, by its answer's parameters (accept -> issued or abandoned). */
  readonly #named = new WeakMap<RdmaAttach, RdmaSlot>();
  constructor(private readonly d: RdmaPreissueDeps) {}

  /** Slots to pre-issue with this answer, as the offer asks (connected sessions only; at most `max` unused per session). */
  preissue(s: RdmaSession, offer: RdmaOffer | undefined): number[] {
    return offer && offer.preissue > 0 ? this.d.sessions.preissue(s, offer.preissue, this.d.max) : [];
  }

  /**
   * A Connect names `offer.slot`, pre-issued to its session: taken for it
   * (linked in issued()), or the Connect is refused (SlotRefusedError).
   */
  acceptNamed(offer: RdmaOffer, identity: Identity, answer: (p: SlotAnswer) => OfferOutcome): OfferOutcome {
    const no = offer.slot!;
    const t = this.d.sessions.take(identity, offer.sessionId, no);
    if (!t.ok && t.why === 'resource') return { ok: false, reason: DeclineReason.DECLINE_REASON_RESOURCE_LIMIT, detail: t.detail };
    if (!t.ok) {
      this.d.refused(t.detail, { identity: identity.name, slot: no });
      throw new SlotRefusedError(t.detail);
    }
    const out = answer({ sessionId: t.session.id, slot: no, newSession: false, linked: true, preissuedSlots: this.preissue(t.session, offer) });
    if (out.ok && out.accepted.params?.$case === 'rdma') this.#named.set(out.accepted.params.rdma, t.slot);
    return out;
  }

  /**
   * The socket an answer naming a pre-issued slot was issued to: link it to
   * that slot before the answer goes out (a server that speaks first writes
   * into the client's ring at once; the client's connection keeps those bytes
   * for the slot until it links it). Undefined: not a named slot's answer. If
   * it cannot be linked, the answer says linked: false and the slot stays the
   * socket's reservation, which the client BINDs as usual.
   */
  issued(socket: GatewaySocket, accepted: Answer, token: Uint8Array | undefined): Answer | undefined {
    if (accepted.params?.$case !== 'rdma') return undefined;
    const p = accepted.params.rdma;
    const slot = this.#named.get(p);
    if (!slot) return undefined;
    this.#named.delete(p);
    const s = slot.session;
    const book = this.d.sessions;
    const unlinked = (why: string): Answer => {
      trace(`socket ${socket.id}: pre-issued slot ${slot.no} of session ${s.id} not linked: ${why}`);
      if (slot.state === 'reserved' && s.slots.get(slot.no) === slot) {
        slot.preissued = false;
        book.arm(slot);
      }
      return { ...accepted, params: { $case: 'rdma', rdma: { ...p, linked: false } } };
    };
    // Given back meanwhile (the client's CLOSE) or the connection is going: the client BINDs or gives the socket up.
    if (this.d.closing() || s.state !== 'live' || !s.conn || s.slots.get(slot.no) !== slot || slot.state !== 'reserved') return unlinked('the slot or its session is gone');
    if (!book.issued(socket, s.id, slot.no)) return unlinked('no reservation to tie');
    const claim = book.claim(socket, { session: s, no: slot.no });
    if (!claim.ok) return unlinked(claim.detail);
    // Live failover names the socket by the short token it would have bound with.
    if (token) slot.resumeToken = resumeToken(token.subarray(0, SHORT_TOKEN_BYTES));
    if (!this.d.link(s, slot, claim.target)) {
      slot.resumeToken = undefined;
      return unlinked('the socket would not take it');
    }
    this.d.revoke(socket);
    return accepted;
  }

  /** An answer that never went out (the host connect failed): its named slot is the client's again, the slots it pre-issued free. */
  abandoned(accepted: Answer): boolean {
    if (accepted.params?.$case !== 'rdma') return false;
    const p = accepted.params.rdma;
    const named = this.#named.get(p);
    this.#named.delete(p);
    if (named) this.d.sessions.giveBack(named);
    const s = this.d.sessions.byId.get(p.sessionId);
    if (s) for (const no of p.preissuedSlots) this.d.sessions.unissue(s, no);
    return named !== undefined;
  }
}
