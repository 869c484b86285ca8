/**
 * The data channels a transport hands an attached socket: a JS stream, or a
 * native link that moves bytes off the JS thread. Split from transport.ts so
 * the socket table needs no import of the transports.
 */
import type { Duplex } from 'node:stream';
import type { TransportKind } from '../proto/gen/sockgate/v1/transport.js';

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
   * The link moves bytes with splice(2). Such a link refuses an SMC host
   * socket (the socket then takes the JS relay): in the two-VM lab a stream
   * spliced through an SMC-R socket on 6.12 arrived corrupted, while the same
   * stream through read/write was intact (test/rdma/vm/smc-lab.ts).
   */
  readonly splices?: boolean;
  /**
   * Start moving bytes between the client side and the host socket. `hostFd`
   * is the JS socket's descriptor: start() must dup() it for the link before
   * it returns (the socket then closes its own copy, which sends nothing).
   * `prefix` holds bytes JS had already read from the host; they go to the
   * client first. May throw; the socket then stays as it was.
   */
  start(hostFd: number, prefix: Buffer[], events: NativeLinkEvents): NativeLink;
}
