/**
 * The common state of every gateway socket (its state machine, transport,
 * fallbacks, byte counts and info), the socket limits, and the names the
 * tables and metrics print.
 */
import { EventEmitter } from 'node:events';
import { SockgateError } from '../proto/errors.js';
import type { Identity } from './policy.js';
import { DeclineReason, TransportKind, declineReasonToJSON, type Fallback } from '../proto/gen/sockgate/v1/transport.js';
import type { TransportMove } from '../proto/gen/sockgate/v1/sockgate.js';
import { SocketKind, SocketState, socketStateToJSON, type HostSocket, type PeerHop, type SocketInfo } from '../proto/gen/sockgate/v1/sockgate.js';
import { tracer } from '../native/trace.js';
import type { IdentityByteBudgets } from './datagram-queue.js';

const trace = tracer('socket');

/** A fallback's detail is cut to this many characters, so a socket's info stays small. */
const FALLBACK_DETAIL_CHARS = 256;

export type SocketKindName = 'stream' | 'datagram' | 'listener';

/**
 * What a caller means to do with a socket it names: 'owner' (negotiate, attach,
 * accept, send, receive, shut down, set options) is for the identity that
 * opened it only; 'admin-read' (info) and 'admin-close' are also an admin's.
 */
export type SocketAccess = 'owner' | 'admin-read' | 'admin-close';
/** Rule name carried by the denial an admin gets for 'owner' access to another identity's socket. */
export const OWNERSHIP_RULE = 'ownership';

/** Lower-case transport name for metrics and tables ("tcp", "grpc", "none"); defined in proto/transports.ts. */
export { transportLabel as transportName } from '../proto/transports.js';

/** Stable reason name ("NOT_COLOCATED"), or "" for none. */
export function reasonName(reason: DeclineReason): string {
  return reason === DeclineReason.DECLINE_REASON_UNSPECIFIED ? '' : declineReasonToJSON(reason).replace('DECLINE_REASON_', '');
}

export interface SocketLimits {
  /** Per-direction user-space buffer bound in bytes. */
  highWatermark: number;
  maxDatagramBytes: number;
  udpIdleTimeoutMs: number;
  /** Received datagrams queued per UDP socket for its readers, in payload bytes and in count (limits.udp_queue_*). */
  udpQueueBytes: number;
  udpQueueDatagrams: number;
  /** RecvFrom streams per UDP socket (limits.max_recv_subscribers). */
  maxRecvSubscribers: number;
  /** Queued datagram bytes per identity and gateway-wide (limits.udp_queue_bytes_per_identity, _total). */
  udpQueueBudgets?: IdentityByteBudgets;
  /** Counts a dropped datagram delivery for the metrics ("queue_full": a reader's queue was at its bound; "no_reader"). */
  onDrop?: (reason: 'queue_full' | 'no_reader') => void;
}

/** Common state of every gateway socket. */
export abstract class GatewaySocket extends EventEmitter {
  abstract readonly kind: SocketKindName;
  /** Current state; changed only by transitionTo. */
  state: SocketState = SocketState.SOCKET_STATE_CONNECTING;
  /** Transport the data channel attached with; UNSPECIFIED until attached. */
  transport: TransportKind = TransportKind.TRANSPORT_KIND_UNSPECIFIED;
  /** Offers passed over during negotiation, in order: the first `maxFallbacks` of them (setFallbacks). */
  fallbacks: Fallback[] = [];
  /** Moves of the open socket's data channel (RDMA live failover), oldest first. */
  moves: TransportMove[] = [];
  /** Fallbacks beyond `maxFallbacks`, counted but not kept. */
  fallbacksOmitted = 0;
  /** Fallbacks kept per socket (limits.max_fallbacks_per_socket; the table sets it). */
  maxFallbacks = Number.POSITIVE_INFINITY;
  /** Negotiate calls made for this socket (bounded by limits.max_negotiate_rounds). */
  negotiateRounds = 0;
  /** Payload bytes received from the host peer. */
  bytesIn = 0;
  /** Payload bytes sent to the host peer. */
  bytesOut = 0;
  readonly createdAtMs = Date.now();
  /** Resolves once the socket is closed and released. */
  readonly closed: Promise<void>;
  /** First error that ended the socket, if any. */
  error: SockgateError | undefined;
  /** Set when the host socket was opened through a peer gateway (a `peers` rule). */
  peer: PeerHop | undefined;
  private resolveClosed!: () => void;

  constructor(
    readonly id: string,
    readonly identity: Identity,
    public localUri: string,
    public remoteUri: string,
  ) {
    super();
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Move to `to` if the current state is one of `from`; returns whether it moved. */
  protected transitionTo(from: readonly SocketState[], to: SocketState, reason: string): boolean {
    if (!from.includes(this.state)) {
      trace(`${this.id} ${socketStateToJSON(this.state)} -> ${socketStateToJSON(to)} refused (${reason})`);
      return false;
    }
    trace(`${this.id} ${socketStateToJSON(this.state)} -> ${socketStateToJSON(to)} (${reason})`);
    this.state = to;
    this.emit('transition', to);
    if (to === SocketState.SOCKET_STATE_CLOSED) {
      this.emit('close', this.error);
      this.resolveClosed();
    }
    return true;
  }

  get isClosed(): boolean {
    return this.state === SocketState.SOCKET_STATE_CLOSED;
  }

  /** Bytes held in user-space buffers on the gateway for this socket. */
  abstract bufferedBytes(): number;
  /** Whether a data channel may attach now (a token for a socket that cannot is spent). */
  abstract acceptsAttach(): boolean;
  /** Graceful close: flush what is buffered, then release. Idempotent. */
  abstract close(): Promise<void>;
  /** Abort at once. Idempotent. */
  abstract destroy(err?: SockgateError): Promise<void>;

  /**
   * Record a negotiation's fallbacks: `all` starts with the ones kept so far.
   * The first `maxFallbacks` are kept (details cut to FALLBACK_DETAIL_CHARS), the rest only counted.
   */
  setFallbacks(all: readonly Fallback[]): void {
    const keep = Math.min(all.length, this.maxFallbacks);
    this.fallbacksOmitted += all.length - keep;
    this.fallbacks = all.slice(0, keep).map((f) => (f.detail.length > FALLBACK_DETAIL_CHARS ? { ...f, detail: f.detail.slice(0, FALLBACK_DETAIL_CHARS) } : f));
  }

  /** The first fallback reason, for tables. */
  get fallbackReason(): DeclineReason {
    return this.fallbacks[0]?.reason ?? DeclineReason.DECLINE_REASON_UNSPECIFIED;
  }

  /** The kernel's view of the host socket (tcp/smc and SMC mode or fallback reason); set by the service for stream sockets. */
  hostSocket: (() => HostSocket | undefined) | undefined;
  /** The kernel's view of the tcp-plane data connection, set when it came in on an SMC data port (transport-tcp.ts). */
  dataConnection: (() => HostSocket) | undefined;

  info(): SocketInfo {
    const hostSocket = this.hostSocket
      ? this.hostSocket()
      : { proto: this.kind === 'datagram' ? 'udp' : 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' };
    return {
      socketId: this.id,
      identity: this.identity.name,
      kind:
        this.kind === 'stream'
          ? SocketKind.SOCKET_KIND_STREAM
          : this.kind === 'datagram'
            ? SocketKind.SOCKET_KIND_DATAGRAM
            : SocketKind.SOCKET_KIND_LISTENER,
      state: this.state,
      localUri: this.localUri,
      remoteUri: this.remoteUri,
      transport: this.transport,
      moves: this.moves,
      fallbackReason: this.fallbackReason,
      fallbacks: this.fallbacks,
      fallbacksOmitted: this.fallbacksOmitted,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      bufferedBytes: this.bufferedBytes(),
      createdAtMs: this.createdAtMs,
      peer: this.peer,
      hostSocket,
      dataConnection: this.dataConnection?.(),
    };
  }
}
