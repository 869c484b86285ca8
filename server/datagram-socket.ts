/** A UDP socket of the gateway: connected or bound, its datagrams queued per reader within byte bounds. */
import type { Socket as DgramSocket, RemoteInfo } from 'node:dgram';
import type { Writable } from 'node:stream';
import {
  DatagramTooLargeError,
  DnsError,
  HostUnreachableError,
  InvalidUriError,
  PolicyDeniedError,
  LimitExceededError,
  SocketClosedError,
  SockgateError,
  WrongSocketKindError,
  fromSystemError,
} from '../proto/errors.js';
import type { Identity } from './policy.js';
import type { ChannelDatagram } from '../proto/wire.js';
import type { DataChannel, JsDataChannel } from './data-channel.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { formatUri } from '../proto/uri.js';
import { tracer } from '../native/trace.js';
import { DatagramQueue, type QueueReader } from './datagram-queue.js';
import { GatewaySocket, type SocketLimits } from './gateway-socket.js';

const trace = tracer('socket');

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
