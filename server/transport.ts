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
 * hands the socket a DataChannel.
 */
import type { Duplex } from 'node:stream';
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
}

/** A transport's answer to one offer. Attach token and expiry are the gateway's to add. */
export type OfferOutcome =
  | { readonly ok: true; readonly accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'> }
  | { readonly ok: false; readonly reason: DeclineReason; readonly detail: string };

/**
 * The client side of one attached socket, as the gateway sees it.
 * - `stream`: a byte Duplex (the payload passes through JS: grpc).
 * - `datagram`: an object-mode Duplex of `{ uri, payload }` datagrams.
 * - `native`: the payload never enters JS. The socket hands the host socket's
 *   descriptor (a dup the link then owns) and any bytes JS had already read
 *   from it to `start`, and a native link (a ring pump for shm/rdma, a splice
 *   relay for the tcp plane) moves bytes on the native I/O thread.
 */
export type DataChannel = JsDataChannel | NativeDataChannel;

export interface JsDataChannel {
  readonly transport: TransportKind;
  readonly mode: 'stream' | 'datagram';
  readonly stream: Duplex;
}

/** Why a native link ended, as the pump reports it. */
export interface NativeLinkEnd {
  reason: 'ok' | 'error' | 'corrupt' | 'aborted';
  /** errno of the first error (0 if none) and its stable code, e.g. ERR_SOCKGATE_RING_CORRUPT or ECONNRESET. */
  errno: number;
  code?: string;
}

/** A SetOption value for the host socket (the shape of the proto's oneof). */
export type HostOption =
  | { $case: 'noDelay'; noDelay: boolean }
  | { $case: 'keepAliveMs'; keepAliveMs: number }
  | { $case: 'sendBufferBytes'; sendBufferBytes: number }
  | { $case: 'recvBufferBytes'; recvBufferBytes: number };

/** A running native link. The link owns the host descriptor it was given. */
export interface NativeLink {
  /** Settles once, when both directions are done or the link failed. */
  readonly ended: Promise<NativeLinkEnd>;
  /** Abort at once; the descriptor is closed. Resolves with the end. Idempotent. */
  close(): Promise<NativeLinkEnd>;
  /** Half-close the host socket (shutdown(2)), if the link supports it. */
  shutdownHost?(read: boolean, write: boolean): void;
  /** Bytes held in the link's buffers (ring or pipe occupancy), if known. */
  bufferedBytes?(): number;
  /** Apply a socket option to the host descriptor the link owns, if the link supports it. */
  setHostOption?(option: HostOption): void;
}

export interface NativeLinkEvents {
  /** Batched byte counts since the last call: to the host peer, and from it. */
  progress(toHost: number, fromHost: number): void;
  /** The host peer sent FIN (the client is told after the bytes before it). */
  hostEnded?(): void;
  /** The client half-closed (the host gets FIN after the bytes before it). */
  clientEnded?(): void;
}

export interface NativeDataChannel {
  readonly transport: TransportKind;
  readonly mode: 'native';
  /**
   * Start moving bytes between the client side and the host socket. `hostFd`
   * is the JS socket's descriptor: start() must dup() it for the link before
   * it returns (the socket then closes its own copy, which sends nothing).
   * `prefix` holds bytes JS had already read from the host; they go to the
   * client first. May throw; the socket then stays as it was.
   */
  start(hostFd: number, prefix: Buffer[], events: NativeLinkEvents): NativeLink;
}

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
   * accept() reserved to the socket here.
   */
  issued?(socket: GatewaySocket, accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>): void;
  /** An offer this transport accepted will never be issued (the socket's host connect failed): release its reservation now. */
  abandoned?(accepted: Omit<Accepted, 'attachToken' | 'tokenExpiresAtMs'>): void;
  /** Start serving attaches (open ports and the like). */
  start(): Promise<void>;
  /** Stop taking new attaches; established channels keep running (the socket table drains them). */
  close(): Promise<void>;
}
