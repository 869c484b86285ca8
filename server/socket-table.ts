/**
 * The gateway's sockets: the host side of every guest socket (a TCP stream, a
 * UDP socket, a TCP listener), spliced with the data channel its transport
 * attached, and the table that owns them, counts them per identity and keeps
 * byte totals for telemetry.
 *
 * Buffers are bounded everywhere: every stream is created with the configured
 * high watermark, and a direction pauses its source while its sink is above it
 * (Envoy's tcp_proxy does the same with read-disable). Half-close passes through.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Socket as NetSocket, Server as NetServer } from 'node:net';
import type { Socket as DgramSocket, RemoteInfo } from 'node:dgram';
import type { Duplex, Writable } from 'node:stream';
import {
  DatagramTooLargeError,
  DnsError,
  HostUnreachableError,
  InvalidUriError,
  PolicyDeniedError,
  RingCorruptError,
  LimitExceededError,
  SocketClosedError,
  SocketNotFoundError,
  SockgateError,
  WrongSocketKindError,
  fromSystemError,
} from '../proto/errors.js';
import type { Identity } from './policy.js';
import type { ChannelDatagram } from '../proto/wire.js';
import type { DataChannel, JsDataChannel, NativeDataChannel, NativeLink, NativeLinkEnd } from './data-channel.js';
import { DeclineReason, TransportKind, transportKindToJSON, declineReasonToJSON, type Fallback } from '../proto/gen/sockgate/v1/transport.js';
import { SocketKind, SocketState, socketStateToJSON, type PeerHop, type SocketInfo } from '../proto/gen/sockgate/v1/sockgate.js';
import { formatUri } from '../proto/uri.js';
import { tracer } from '../native/trace.js';
import { DatagramQueue, type IdentityByteBudgets, type QueueReader } from './datagram-queue.js';

const trace = tracer('socket');

/** How long a closed socket's final info is kept: a client confirming its end of stream asks for it. */
const TOMBSTONE_MS = 60_000;
/** At most this many tombstones, so churn cannot grow memory. */
const MAX_TOMBSTONES = 16_384;
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

/** Lower-case transport name for metrics and tables ("tcp", "grpc", "none"). */
export function transportName(kind: TransportKind): string {
  return kind === TransportKind.TRANSPORT_KIND_UNSPECIFIED ? 'none' : transportKindToJSON(kind).replace('TRANSPORT_KIND_', '').toLowerCase();
}

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

  info(): SocketInfo {
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
      fallbackReason: this.fallbackReason,
      fallbacks: this.fallbacks,
      fallbacksOmitted: this.fallbacksOmitted,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      bufferedBytes: this.bufferedBytes(),
      createdAtMs: this.createdAtMs,
      peer: this.peer,
    };
  }
}

function streamBuffered(s: Duplex | undefined): number {
  if (!s) return 0;
  return (s.writableLength ?? 0) + (s.readableLength ?? 0);
}

/**
 * A TCP stream: the host socket and, once attached, the client's data channel.
 * The socket owns both streams and destroys them when it ends.
 */
export class StreamSocket extends GatewaySocket {
  readonly kind = 'stream' as const;
  /** Attached JS channel; undefined until attach() (and in native mode). */
  private channel: JsDataChannel | undefined;
  /** Native link that owns the host descriptor, in native mode. */
  private link: NativeLink | undefined;
  /** Host peer sent FIN (and the channel was told). */
  private hostEnded = false;
  /** The guest half-closed (and the host socket was ended). */
  private channelEnded = false;
  /** Guest asked for SHUT_RD: host bytes are read and dropped. */
  private discardHostReads = false;

  constructor(id: string, identity: Identity, readonly host: NetSocket) {
    super(id, identity, formatUri('tcp', host.localAddress ?? '', host.localPort ?? 0), formatUri('tcp', host.remoteAddress ?? '', host.remotePort ?? 0));
    // Until a channel attaches, nothing is read beyond the stream's own high watermark.
    host.pause();
    this.state = SocketState.SOCKET_STATE_PENDING_ATTACH;
    host.on('error', (err) => void this.destroy(fromSystemError(err, `host socket ${this.remoteUri}`)));
    host.on('close', () => this.maybeClosed());
  }

  acceptsAttach(): boolean {
    return this.state === SocketState.SOCKET_STATE_PENDING_ATTACH;
  }

  /** The native link that owns the host descriptor, in native mode (socket options go through it). */
  get nativeLink(): NativeLink | undefined {
    return this.link;
  }

  bufferedBytes(): number {
    if (this.link) return this.link.bufferedBytes?.() ?? 0;
    return streamBuffered(this.host) + streamBuffered(this.channel?.stream);
  }

  /** Splice the attached channel with the host socket. */
  attach(channel: DataChannel): void {
    if (channel.mode === 'native') return this.attachNative(channel);
    if (channel.mode !== 'stream') throw new WrongSocketKindError('a stream socket needs a stream channel');
    if (!this.transitionTo([SocketState.SOCKET_STATE_PENDING_ATTACH], SocketState.SOCKET_STATE_OPEN, `attached ${transportName(channel.transport)}`)) {
      channel.stream.on('error', () => {}); // nobody else listens to a channel we refuse
      channel.stream.destroy(new SocketClosedError(`socket ${this.id} is not waiting for an attach`));
      return;
    }
    this.channel = channel;
    this.transport = channel.transport;
    const host = this.host;
    const ch = channel.stream;

    // host -> guest
    host.on('data', (chunk: Buffer) => {
      this.bytesIn += chunk.length;
      if (this.discardHostReads) return;
      if (!ch.write(chunk)) host.pause();
    });
    ch.on('drain', () => host.resume());
    host.on('end', () => {
      this.hostEnded = true;
      this.halfClosed('host peer sent FIN');
      if (!ch.writableEnded) ch.end();
    });

    // guest -> host
    ch.on('data', (chunk: Buffer) => {
      if (this.channelEnded) return;
      this.bytesOut += chunk.length;
      if (!host.write(chunk)) ch.pause();
    });
    host.on('drain', () => ch.resume());
    ch.on('end', () => this.endHostWrite('guest half-closed'));

    ch.on('error', (err) => void this.destroy(err instanceof SockgateError ? err : fromSystemError(err, `data channel of ${this.id}`)));
    ch.on('close', () => {
      // A channel that closes without ending its reads cleanly is an abort.
      if (!ch.readableEnded && !this.isClosed) void this.destroy(new SocketClosedError(`data channel of ${this.id} closed`));
      this.maybeClosed();
    });
    host.resume();
    ch.resume();
  }

  /**
   * Native mode: hand the host descriptor to a native link. The JS socket is
   * detached without a FIN (its fd is closed, a dup lives on in the link), and
   * whatever JS had already read from it goes to the client first.
   */
  private attachNative(channel: NativeDataChannel): void {
    const fd = (this.host as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0 || this.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) {
      throw new SocketClosedError(`socket ${this.id} is not waiting for an attach`);
    }
    const prefix: Buffer[] = [];
    this.host.pause();
    for (let chunk = this.host.read() as Buffer | null; chunk !== null; chunk = this.host.read() as Buffer | null) prefix.push(chunk);
    for (const b of prefix) this.bytesIn += b.length;
    this.transport = channel.transport;
    // start() dup()s the descriptor for its link before returning; then the JS socket gives up its own.
    const link = channel.start(fd, prefix, {
      progress: (toHost, fromHost) => {
        this.bytesOut += toHost;
        this.bytesIn += fromHost;
      },
      hostEnded: () => {
        this.hostEnded = true;
        this.halfClosed('host peer sent FIN');
      },
      clientEnded: () => {
        this.channelEnded = true;
        this.halfClosed('guest half-closed');
      },
    });
    this.host.removeAllListeners('close');
    this.host.removeAllListeners('error');
    this.host.on('error', () => {});
    this.host.destroy();
    this.link = link;
    this.transitionTo([SocketState.SOCKET_STATE_PENDING_ATTACH], SocketState.SOCKET_STATE_OPEN, `attached ${transportName(channel.transport)} (native)`);
    void link.ended.then((end: NativeLinkEnd) => {
      if (end.reason === 'corrupt') this.error ??= new RingCorruptError(`socket ${this.id}: the client corrupted its shared ring (${end.code ?? 'ERR_SOCKGATE_RING_CORRUPT'})`);
      else if (end.reason === 'error') this.error ??= fromSystemError(Object.assign(new Error(end.code ?? `errno ${end.errno}`), { code: end.code }), `socket ${this.id}`);
      this.transitionTo([SocketState.SOCKET_STATE_OPEN, SocketState.SOCKET_STATE_HALF_CLOSED], SocketState.SOCKET_STATE_CLOSED, this.error?.code ?? `native link ended (${end.reason})`);
    });
  }

  private endHostWrite(reason: string): void {
    if (this.channelEnded) return;
    this.channelEnded = true;
    this.halfClosed(reason);
    if (!this.host.writableEnded && !this.host.destroyed) this.host.end();
  }

  private halfClosed(reason: string): void {
    this.transitionTo([SocketState.SOCKET_STATE_OPEN], SocketState.SOCKET_STATE_HALF_CLOSED, reason);
  }

  /** Half-close like shutdown(2): `write` sends FIN to the host peer, `read` drops what it sends. */
  shutdown(read: boolean, write: boolean): void {
    if (this.isClosed) throw new SocketClosedError(`socket ${this.id} is closed`);
    if (this.link) {
      if (!this.link.shutdownHost) throw new WrongSocketKindError(`socket ${this.id} rides a native link: half-close through its data plane`);
      this.link.shutdownHost(read, write);
      this.halfClosed(`shutdown(${read && write ? 'SHUT_RDWR' : read ? 'SHUT_RD' : 'SHUT_WR'})`);
      return;
    }
    if (write) {
      this.channel?.stream.pause();
      this.endHostWrite('shutdown(SHUT_WR)');
    }
    if (read) {
      this.discardHostReads = true;
      this.halfClosed('shutdown(SHUT_RD)');
      const ch = this.channel?.stream;
      if (ch && !ch.writableEnded) ch.end();
      this.host.resume();
    }
  }

  private maybeClosed(): void {
    if (this.isClosed || this.link) return;
    const channelDone = !this.channel || this.channel.stream.destroyed;
    if (this.host.destroyed && channelDone) this.transitionTo([SocketState.SOCKET_STATE_PENDING_ATTACH, SocketState.SOCKET_STATE_OPEN, SocketState.SOCKET_STATE_HALF_CLOSED, SocketState.SOCKET_STATE_CONNECTING], SocketState.SOCKET_STATE_CLOSED, this.error ? this.error.code : 'both sides closed');
    else if (this.host.destroyed && this.channel && !this.hostEnded && !this.channel.stream.destroyed) {
      // Host went away without FIN (reset): the guest must not wait for bytes that will not come.
      void this.destroy(this.error ?? new SocketClosedError(`host socket of ${this.id} closed`));
    }
  }

  async close(): Promise<void> {
    if (this.isClosed) return this.closed;
    if (this.link) {
      await this.link.close();
      return this.closed;
    }
    if (!this.channel) return this.destroy();
    // Flush both directions, then let autoDestroy close the streams.
    this.endHostWrite('close');
    const ch = this.channel.stream;
    if (!ch.writableEnded) ch.end();
    return this.closed;
  }

  async destroy(err?: SockgateError): Promise<void> {
    if (this.isClosed) return this.closed;
    this.error ??= err;
    if (this.link) {
      await this.link.close();
      return this.closed;
    }
    this.host.destroy();
    const ch = this.channel?.stream as (Duplex & { resetAndDestroy?: () => void }) | undefined;
    // On the tcp plane, an abort must reach the guest as a reset, never as a clean FIN.
    // Not after our FIN: libuv cannot reset a shut-down socket, and Node then leaks the handle.
    if (err && ch && typeof ch.resetAndDestroy === 'function' && !ch.destroyed && !ch.writableEnded) ch.resetAndDestroy();
    else ch?.destroy(err);
    this.maybeClosed();
    return this.closed;
  }
}

/** A UDP socket: connected (Connect udp://) or bound (Bind). */
export class DatagramSocket extends GatewaySocket {
  readonly kind = 'datagram' as const;
  /** Attached channel; undefined until attach(). */
  private channel: JsDataChannel | undefined;
  /** The channel's share of the queue, while attached. */
  private channelReader: QueueReader | undefined;
  /** RecvFrom streams listening; each gets every datagram its share of the queue has room for. */
  private readonly receivers = new Set<{ stream: Writable; reader: QueueReader; toMessage: (d: ChannelDatagram) => unknown }>();
  /** Datagrams held for the readers, bounded in bytes and count (object-mode streams count messages, not bytes). */
  private readonly queue: DatagramQueue;
  /** Datagrams dropped because the guest was not reading fast enough (UDP semantics: no buffering). */
  dropped = 0;
  /** Datagrams from the guest dropped because their destination was refused (policy, DNS, unreachable). */
  refused = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private lastActivity = Date.now();

  constructor(
    id: string,
    identity: Identity,
    readonly host: DgramSocket,
    readonly connected: boolean,
    private readonly limits: SocketLimits,
    /** Policy check for a send destination; resolves to the address to use. */
    private readonly resolveDestination: (uri: string) => Promise<{ address: string; port: number }>,
  ) {
    const local = host.address();
    let remote = '';
    if (connected) {
      const r = host.remoteAddress();
      remote = formatUri('udp', r.address, r.port);
    }
    super(id, identity, formatUri('udp', local.address, local.port), remote);
    const shared = limits.udpQueueBudgets?.acquire(identity.name);
    this.queue = new DatagramQueue({ maxBytes: limits.udpQueueBytes, maxDatagrams: limits.udpQueueDatagrams }, shared?.budget);
    if (shared) void this.closed.then(shared.release);
    this.state = SocketState.SOCKET_STATE_OPEN;
    host.on('message', (msg: Buffer, rinfo: RemoteInfo) => this.onMessage(msg, rinfo));
    host.on('error', (err) => void this.destroy(fromSystemError(err, `udp socket ${this.localUri}`)));
    host.on('close', () => this.transitionTo([SocketState.SOCKET_STATE_OPEN, SocketState.SOCKET_STATE_HALF_CLOSED], SocketState.SOCKET_STATE_CLOSED, this.error?.code ?? 'closed'));
    this.idleTimer = setInterval(() => {
      if (!this.channel && this.receivers.size === 0 && Date.now() - this.lastActivity > limits.udpIdleTimeoutMs) {
        void this.destroy(new SocketClosedError(`udp socket ${this.id} idle for ${limits.udpIdleTimeoutMs} ms with no reader`));
      }
    }, Math.min(limits.udpIdleTimeoutMs, 30_000));
    this.idleTimer.unref();
  }

  bufferedBytes(): number {
    return this.queue.bytes;
  }

  /** Datagrams queued for the readers right now. */
  get queuedDatagrams(): number {
    return this.queue.count;
  }

  acceptsAttach(): boolean {
    return !this.isClosed && !this.channel;
  }

  private onMessage(payload: Buffer, rinfo: RemoteInfo): void {
    this.lastActivity = Date.now();
    this.bytesIn += payload.length;
    const d: ChannelDatagram = { uri: this.connected ? '' : formatUri('udp', rinfo.address, rinfo.port), payload };
    let delivered = false;
    let readers = 0;
    const ch = this.channel?.stream;
    if (ch && this.channelReader && !ch.writableEnded && !ch.destroyed) {
      readers++;
      if (this.channelReader.write(ch, d, payload.length)) delivered = true;
      else this.limits.onDrop?.('queue_full');
    }
    for (const r of this.receivers) {
      readers++;
      if (r.stream.writableEnded || r.stream.destroyed) continue;
      if (r.reader.write(r.stream, r.toMessage(d), payload.length)) delivered = true;
      else this.limits.onDrop?.('queue_full');
    }
    if (!delivered) this.dropped++;
    if (readers === 0) this.limits.onDrop?.('no_reader');
  }

  /** Send one datagram; checks size and (for unconnected sockets) policy on the destination. */
  async send(d: ChannelDatagram): Promise<number> {
    if (this.isClosed) throw new SocketClosedError(`socket ${this.id} is closed`);
    if (d.payload.length > this.limits.maxDatagramBytes) {
      throw new DatagramTooLargeError(`datagram of ${d.payload.length} bytes exceeds the maximum of ${this.limits.maxDatagramBytes} bytes`);
    }
    this.lastActivity = Date.now();
    let dest: { address: string; port: number } | undefined;
    if (d.uri !== '') {
      // sendto(2) on a connected socket with an address is EISCONN: the peer is fixed at connect.
      if (this.connected) throw new WrongSocketKindError(`socket ${this.id} is connected to ${this.remoteUri}: send without a destination URI`);
      dest = await this.resolveDestination(d.uri);
    } else if (!this.connected) throw new WrongSocketKindError(`socket ${this.id} is not connected: a datagram needs a destination URI`);
    await new Promise<void>((resolve, reject) => {
      const done = (err: Error | null) => (err ? reject(fromSystemError(err, `sendto ${d.uri || this.remoteUri}`)) : resolve());
      try {
        if (dest) this.host.send(d.payload, dest.port, dest.address, done);
        else this.host.send(d.payload, done);
      } catch (err) {
        done(err as Error);
      }
    });
    this.bytesOut += d.payload.length;
    return d.payload.length;
  }

  /**
   * Subscribe a RecvFrom stream: it gets `toMessage(d)` for each datagram the
   * socket's queue has room for. At most limits.maxRecvSubscribers at once
   * (LimitExceededError beyond). Returns the unsubscribe.
   */
  subscribe(stream: Writable, toMessage: (d: ChannelDatagram) => unknown): () => void {
    if (this.isClosed) throw new SocketClosedError(`socket ${this.id} is closed`);
    if (this.receivers.size >= this.limits.maxRecvSubscribers) {
      throw new LimitExceededError(`socket ${this.id} already has ${this.receivers.size} RecvFrom streams, the limit is ${this.limits.maxRecvSubscribers} (limits.max_recv_subscribers)`);
    }
    const entry = { stream, reader: this.queue.reader(), toMessage };
    this.receivers.add(entry);
    return () => {
      if (!this.receivers.delete(entry)) return;
      entry.reader.end();
      this.lastActivity = Date.now();
    };
  }

  attach(channel: DataChannel): void {
    if (channel.mode !== 'datagram') throw new WrongSocketKindError('a datagram socket needs a datagram channel');
    if (this.channel || this.isClosed) {
      channel.stream.on('error', () => {}); // nobody else listens to a channel we refuse
      channel.stream.destroy(new SocketClosedError(`socket ${this.id} is not waiting for an attach`));
      return;
    }
    this.channel = channel;
    this.channelReader = this.queue.reader();
    this.transport = channel.transport;
    const ch = channel.stream;
    ch.on('close', () => this.channelReader?.end());
    // One send at a time per channel: the channel pauses while a send is in flight.
    ch.on('data', (d: ChannelDatagram) => {
      ch.pause();
      this.send(d).then(
        () => ch.resume(),
        (err: unknown) => {
          const e = err instanceof SockgateError ? err : fromSystemError(err, 'send');
          // Like sendto(2) failing for one destination: that datagram is dropped
          // (and counted), the socket lives on. Anything else ends the socket.
          if (e instanceof PolicyDeniedError || e instanceof DnsError || e instanceof HostUnreachableError || e instanceof InvalidUriError) {
            this.refused++;
            trace(`${this.id}: datagram to ${d.uri} dropped: ${e.message}`);
            ch.resume();
            return;
          }
          void this.destroy(e);
        },
      );
    });
    ch.on('end', () => void this.close());
    ch.on('error', (err) => void this.destroy(err instanceof SockgateError ? err : fromSystemError(err, `data channel of ${this.id}`)));
    ch.on('close', () => {
      if (!this.isClosed) void this.destroy();
    });
  }

  async close(): Promise<void> {
    return this.destroy();
  }

  async destroy(err?: SockgateError): Promise<void> {
    if (this.isClosed) return this.closed;
    this.error ??= err;
    clearInterval(this.idleTimer);
    this.channel?.stream.destroy(err);
    this.channelReader?.end();
    for (const r of this.receivers) r.reader.end();
    this.receivers.clear();
    try {
      this.host.close();
    } catch {
      // already closed
      this.transitionTo([SocketState.SOCKET_STATE_OPEN, SocketState.SOCKET_STATE_HALF_CLOSED], SocketState.SOCKET_STATE_CLOSED, 'closed');
    }
    return this.closed;
  }
}

/** A TCP listener: inbound connections wait (paused) until the guest's Accept stream takes them. */
export class ListenerSocket extends GatewaySocket {
  readonly kind = 'listener' as const;
  /** The Accept stream's handler; undefined while nobody accepts. */
  private acceptor: ((host: NetSocket) => void) | undefined;
  /** Inbound connections that arrived while no Accept stream was open (paused; at most `backlog`). */
  private readonly queued: NetSocket[] = [];

  constructor(
    id: string,
    identity: Identity,
    readonly server: NetServer,
    localUri: string,
    private readonly backlog: number,
  ) {
    super(id, identity, localUri, '');
    this.state = SocketState.SOCKET_STATE_LISTENING;
    server.on('connection', (host: NetSocket) => {
      if (this.acceptor) return this.acceptor(host);
      if (this.queued.length >= this.backlog) return void host.destroy();
      host.on('error', () => {});
      this.queued.push(host);
    });
    server.on('close', () => this.transitionTo([SocketState.SOCKET_STATE_LISTENING], SocketState.SOCKET_STATE_CLOSED, this.error?.code ?? 'closed'));
  }

  bufferedBytes(): number {
    return 0;
  }

  acceptsAttach(): boolean {
    return false;
  }

  get hasAcceptor(): boolean {
    return this.acceptor !== undefined;
  }

  /** Install the Accept stream's handler; one at a time. Returns the uninstall. */
  setAcceptor(fn: (host: NetSocket) => void): () => void {
    if (this.acceptor) throw new WrongSocketKindError(`listener ${this.id} already has an Accept stream`);
    this.acceptor = fn;
    for (const host of this.queued.splice(0)) {
      if (!host.destroyed) fn(host);
    }
    return () => {
      if (this.acceptor === fn) this.acceptor = undefined;
    };
  }

  async close(): Promise<void> {
    return this.destroy();
  }

  async destroy(err?: SockgateError): Promise<void> {
    if (this.isClosed) return this.closed;
    this.error ??= err;
    this.acceptor = undefined;
    for (const host of this.queued.splice(0)) host.destroy();
    this.server.close();
    return this.closed;
  }
}

export interface ByteTotal {
  transport: string;
  direction: 'in' | 'out';
  bytes: number;
}

/**
 * Every open socket, by id. Enforces the gateway-wide and per-identity socket
 * limits and remembers byte totals of closed sockets for the metrics.
 */
export class SocketTable {
  private readonly sockets = new Map<string, GatewaySocket>();
  /** Open sockets per identity name. */
  private readonly perIdentity = new Map<string, number>();
  /** Bytes of closed sockets, by `${transport}/${direction}`. */
  private readonly closedBytes = new Map<string, number>();
  /** Final info of recently closed sockets, insertion-ordered for eviction: GetInfo answers for them. */
  private readonly tombstones = new Map<string, { info: SocketInfo; at: number }>();
  /** Called for every socket that leaves the table (the gateway revokes its attach tokens). */
  private readonly removedHooks: ((s: GatewaySocket) => void)[] = [];
  private nextId = 1;
  /** Open sockets plus reservations not yet added. */
  private totalReserved = 0;
  /** Random per-process part of socket ids, so an id from an earlier gateway process never names a new socket. */
  private readonly instance = randomBytes(3).readUIntBE(0, 3).toString(36).padStart(5, '0');

  constructor(
    private readonly maxSockets: number,
    /** Fallbacks each socket keeps (limits.max_fallbacks_per_socket). */
    private readonly maxFallbacksPerSocket = Number.POSITIVE_INFINITY,
  ) {}

  /** Run `fn` for every socket that leaves the table. */
  onRemoved(fn: (s: GatewaySocket) => void): void {
    this.removedHooks.push(fn);
  }

  /** Reserve a slot for `identity`, or throw LimitExceededError. Release with `release` if the socket never materialises. */
  reserve(identity: Identity): void {
    if (this.totalReserved >= this.maxSockets) {
      throw new LimitExceededError(`gateway socket limit reached (limits.max_sockets = ${this.maxSockets})`);
    }
    const n = this.perIdentity.get(identity.name) ?? 0;
    if (n >= identity.maxSockets) {
      throw new LimitExceededError(`identity "${identity.name}" has ${n} open sockets, its limit is ${identity.maxSockets}`);
    }
    this.perIdentity.set(identity.name, n + 1);
    this.totalReserved++;
  }

  release(identity: Identity): void {
    const n = (this.perIdentity.get(identity.name) ?? 1) - 1;
    if (n <= 0) this.perIdentity.delete(identity.name);
    else this.perIdentity.set(identity.name, n);
    this.totalReserved--;
  }

  newId(kind: SocketKindName): string {
    const prefix = kind === 'stream' ? 't' : kind === 'datagram' ? 'u' : 'l';
    return `${prefix}${(this.nextId++).toString(36)}-${this.instance}`;
  }

  /** Add a socket whose slot was reserved; it leaves the table (and frees the slot) when it closes. */
  add(socket: GatewaySocket): void {
    socket.maxFallbacks = this.maxFallbacksPerSocket;
    socket.setFallbacks(socket.fallbacks);
    this.sockets.set(socket.id, socket);
    void socket.closed.then(() => {
      this.sockets.delete(socket.id);
      this.release(socket.identity);
      const t = transportName(socket.transport);
      this.closedBytes.set(`${t}/in`, (this.closedBytes.get(`${t}/in`) ?? 0) + socket.bytesIn);
      this.closedBytes.set(`${t}/out`, (this.closedBytes.get(`${t}/out`) ?? 0) + socket.bytesOut);
      this.bury(socket);
      for (const fn of this.removedHooks) fn(socket);
    });
  }

  private bury(socket: GatewaySocket): void {
    const now = Date.now();
    this.tombstones.set(socket.id, { info: socket.info(), at: now });
    for (const [id, t] of this.tombstones) {
      if (this.tombstones.size <= MAX_TOMBSTONES && now - t.at < TOMBSTONE_MS) break;
      this.tombstones.delete(id);
    }
  }

  /** Info of a live socket, or of one that closed within TOMBSTONE_MS (state CLOSED), for `identity` (its own, or any for an admin). */
  info(id: string, identity: Identity): SocketInfo {
    const live = this.sockets.get(id);
    if (live) return this.get(id, identity, 'admin-read').info();
    const t = this.tombstones.get(id);
    if (t && Date.now() - t.at < TOMBSTONE_MS && (t.info.identity === identity.name || identity.admin)) return t.info;
    return this.get(id, identity, 'admin-read').info();
  }

  /**
   * Look a socket up for what `identity` means to do with it (`access`). A
   * socket belongs to the identity that opened it, for good: only its owner
   * acts on it ('owner'); an admin may also read its info ('admin-read') and
   * close it ('admin-close'). Another identity's socket is "not found" to a
   * non-admin (its existence is not revealed); an admin asking for 'owner'
   * access to it is denied.
   */
  get(id: string, identity: Identity, access: SocketAccess): GatewaySocket {
    const s = this.sockets.get(id);
    if (s && s.identity.name === identity.name) return s;
    if (s && identity.admin) {
      if (access !== 'owner') return s;
      throw new PolicyDeniedError(`socket ${s.id} belongs to identity "${s.identity.name}": an admin may list and close it, not act on its data`, { rule: OWNERSHIP_RULE });
    }
    throw new SocketNotFoundError(`no socket "${Array.from(String(id)).slice(0, 64).join('')}" for identity "${identity.name}"`);
  }

  /** Every socket, or those of identity `owner`. */
  list(owner?: string): GatewaySocket[] {
    const all = [...this.sockets.values()];
    return owner ? all.filter((s) => s.identity.name === owner) : all;
  }

  get size(): number {
    return this.sockets.size;
  }

  /** Cumulative bytes by transport and direction, closed and open sockets together. */
  byteTotals(): ByteTotal[] {
    const totals = new Map(this.closedBytes);
    for (const s of this.sockets.values()) {
      const t = transportName(s.transport);
      totals.set(`${t}/in`, (totals.get(`${t}/in`) ?? 0) + s.bytesIn);
      totals.set(`${t}/out`, (totals.get(`${t}/out`) ?? 0) + s.bytesOut);
    }
    return [...totals].map(([k, bytes]) => {
      const [transport, direction] = k.split('/') as [string, 'in' | 'out'];
      return { transport, direction, bytes };
    });
  }

  /** Open sockets by kind and transport. */
  openCounts(): { kind: string; transport: string; count: number }[] {
    const counts = new Map<string, number>();
    for (const s of this.sockets.values()) {
      const k = `${s.kind}/${transportName(s.transport)}`;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    return [...counts].map(([k, count]) => {
      const [kind, transport] = k.split('/') as [string, string];
      return { kind, transport, count };
    });
  }

  /** Wait until the table is empty or `ms` passed; returns whether it emptied. */
  async drain(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.sockets.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.all([...this.sockets.values()].map((s) => s.closed)), new Promise((r) => setTimeout(r, Math.min(250, Math.max(1, deadline - Date.now()))))]);
    }
    return this.sockets.size === 0;
  }

  async destroyAll(err?: SockgateError): Promise<void> {
    await Promise.all([...this.sockets.values()].map((s) => s.destroy(err)));
  }
}
