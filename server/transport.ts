/**
 * The data-plane seam. A guest's socket is opened on the host by the control
 * plane; its payload moves over a Transport negotiated per socket. Every
 * transport (tcp, grpc, and later shm and rdma) implements this interface, and
 * the gateway never needs to know which one a socket rides once attached.
 *
 * Lifecycle: the negotiator asks each transport, in the client's order of
 * preference, to `accept()` an offer. The first that accepts returns attach
 * parameters; the gateway adds a single-use attach token. When the client
 * attaches (opens the data connection, the gRPC stream, the ring, the QP) and
 * presents the token, the transport redeems it through the AttachRegistry and
 * hands the socket a DataChannel. Transports that carry many sockets over one
 * client session (shm, rdma) keep their reservations in the one slot-session
 * book (slot-session.ts): issued() ties one to its socket, abandoned() and
 * socketRemoved() release it.
 */
import type { Accepted, DeclineReason, TransportKind, TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import type { Identity } from './policy.js';
import type { GatewaySocket } from './socket-table.js';

/** What a transport knows about the caller when it decides on an offer. */
export interface OfferContext {
  readonly identity: Identity;
  /** The kind of socket that will ride the transport. */
  readonly socketKind: 'stream' | 'datagram';
  /** The control call's peer, as grpc-js reports it (`ipv4:1.2.3.4:5`, `unix:...`). */
  readonly peer: string;
  /** A Connect (its offer may name a pre-issued shm or rdma slot); not a Negotiate or an inbound Accept. */
  readonly connect?: boolean;
}

/** A transport's answer to one offer. Attach token and expiry are the gateway's to add. */
export type OfferOutcome =
  | { readonly ok: true; readonly accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'> }
  | { readonly ok: false; readonly reason: DeclineReason; readonly detail: string };

// The data channel types moved to data-channel.ts (socket-table imports them from there, no cycle).
export type { DataChannel, JsDataChannel, NativeLinkEnd, HostOption, NativeLink, NativeLinkEvents, NativeDataChannel } from './data-channel.js';

/** One datagram on a datagram channel: a wire shape, defined in the contract. */
export type { ChannelDatagram } from '../proto/wire.js';

export interface Transport {
  readonly kind: TransportKind;
  /** Highest protocol version this gateway speaks for the transport. */
  readonly version: number;
  /** Decide on one offer. Must not throw for a bad offer: decline with a reason. */
  accept(offer: TransportOffer, ctx: OfferContext): OfferOutcome | Promise<OfferOutcome>;
  /**
   * Told which socket an offer this transport accepted was issued to, once the
   * negotiator issued its attach token. A transport whose attach names no
   * reservation (rdma: the connect request carries the token only) ties what
   * accept() reserved to the socket here; one that links the socket at once
   * (shm, rdma: a pre-issued slot the Connect named) does so here, and may return
   * amended parameters for the answer (it could not link after all).
   */
  issued?(socket: GatewaySocket, accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>, token?: Uint8Array): Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'> | void;
  /** An offer this transport accepted will never be issued (the socket's host connect failed): release its reservation now. */
  abandoned?(accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>): void;
  /** A socket left the table: what it still holds here (a reservation it never attached with) is released at once. */
  socketRemoved?(socket: GatewaySocket): void;
  /** Why offers are declined as unavailable ('' while serving); the negotiator names it. */
  readonly unavailableReason?: string;
  /** Start serving attaches (open ports and the like). */
  start(): Promise<void>;
  /** Stop taking new attaches; established channels keep running (the socket table drains them). */
  close(): Promise<void>;
  /** After the socket table drained (or was destroyed): end sessions, close listeners. Idempotent. */
  shutdown?(): Promise<void>;
}
