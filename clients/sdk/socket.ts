/**
 * The SDK's sockets: a stream socket is a Node Duplex over whatever data
 * channel was attached (a TCP data connection, a gRPC stream, later a ring),
 * shaped like net.Socket where it matters; a datagram socket is an
 * EventEmitter with send() and 'message', shaped like dgram.Socket.
 */
import { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import type { Fallback } from '../../proto/gen/sockgate/v1/transport.js';
import { DeclineReason, TransportKind, declineReasonToJSON, transportKindToJSON } from '../../proto/gen/sockgate/v1/transport.js';
import { ConnectionResetError, DatagramTooLargeError, SocketClosedError, SockgateError, fromSystemError } from '../../server/errors.js';
import type { ChannelDatagram } from '../../server/transport.js';

export type TransportName = 'shm' | 'rdma' | 'tcp' | 'grpc';

export const TRANSPORT_KINDS: Readonly<Record<TransportName, TransportKind>> = {
  shm: TransportKind.TRANSPORT_KIND_SHM,
  rdma: TransportKind.TRANSPORT_KIND_RDMA,
  tcp: TransportKind.TRANSPORT_KIND_TCP,
  grpc: TransportKind.TRANSPORT_KIND_GRPC,
};

export function transportNameOf(kind: TransportKind): TransportName | 'none' {
  if (kind === TransportKind.TRANSPORT_KIND_UNSPECIFIED) return 'none';
  return transportKindToJSON(kind).replace('TRANSPORT_KIND_', '').toLowerCase() as TransportName;
}

/** A passed-over transport and why, as the SDK reports it. */
export interface FallbackInfo {
  transport: TransportName | 'none';
  /** Stable reason code, e.g. NOT_COLOCATED. */
  reason: string;
  detail: string;
}

export function fallbackInfo(f: Fallback): FallbackInfo {
  return {
    transport: transportNameOf(f.kind),
    reason: f.reason === DeclineReason.DECLINE_REASON_UNSPECIFIED ? '' : declineReasonToJSON(f.reason).replace('DECLINE_REASON_', ''),
    detail: f.detail,
  };
}

/** Operations a socket asks of its gateway over the control channel. */
export interface SocketControl {
  setOption(id: string, option: { noDelay?: boolean; keepAliveMs?: number; sendBufferBytes?: number; recvBufferBytes?: number }): Promise<void>;
  shutdown(id: string, how: 'read' | 'write' | 'both'): Promise<void>;
  close(id: string): Promise<void>;
  /** Confirm a clean end of stream: resolves if the gateway is alive and knows the socket ended. */
  confirmEnd(id: string): Promise<void>;
}

export interface SocketMeta {
  socketId: string;
  transport: TransportName;
  fallbacks: FallbackInfo[];
  localUri: string;
  remoteUri: string;
}

function splitUri(uri: string): { address: string; port: number; family: 'IPv4' | 'IPv6' } | undefined {
  const m = /^[a-z0-9]+:\/\/(\[([^\]]+)\]|([^:]+)):([0-9]+)$/.exec(uri);
  if (!m) return undefined;
  const v6 = m[2];
  return { address: v6 ?? m[3]!, port: Number(m[4]), family: v6 ? 'IPv6' : 'IPv4' };
}

/**
 * A stream socket through the gateway. Behaves like net.Socket where libraries
 * look: 'connect' and 'ready' events, setNoDelay, setKeepAlive, remoteAddress,
 * remotePort, end() half-closes, destroy(err) aborts.
 */
export class GatewaySocket extends Duplex {
  readonly socketId: string;
  /** Transport the bytes ride. */
  readonly transport: TransportName;
  /** Transports passed over before this one, with reasons. */
  readonly fallbacks: FallbackInfo[];
  /** Host-side local address of the gateway's socket. */
  readonly localUri: string;
  /** The destination as the gateway connected it. */
  readonly remoteUri: string;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly remoteFamily: string | undefined;
  readonly localAddress: string | undefined;
  readonly localPort: number | undefined;
  /** net.Socket compatibility: never connecting once handed out. */
  readonly connecting = false;
  /** Bytes received from the destination. */
  bytesRead = 0;
  /** Bytes handed to the gateway for the destination. */
  bytesWrittenTotal = 0;
  /** True while the inner end-of-stream is being confirmed. */
  private confirmingEnd = false;

  constructor(
    private readonly inner: Duplex,
    meta: SocketMeta,
    private readonly control: SocketControl,
    /** Whether the inner channel's end must be confirmed over the control plane (raw tcp plane). */
    private readonly confirmEof: boolean,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: inner.readableHighWaterMark, writableHighWaterMark: inner.writableHighWaterMark });
    this.socketId = meta.socketId;
    this.transport = meta.transport;
    this.fallbacks = meta.fallbacks;
    this.localUri = meta.localUri;
    this.remoteUri = meta.remoteUri;
    const r = splitUri(meta.remoteUri);
    const l = splitUri(meta.localUri);
    this.remoteAddress = r?.address;
    this.remotePort = r?.port;
    this.remoteFamily = r?.family;
    this.localAddress = l?.address;
    this.localPort = l?.port;
    inner.on('data', (chunk: Buffer) => {
      this.bytesRead += chunk.length;
      this.idleTimer?.refresh();
      if (!this.push(chunk)) inner.pause();
    });
    inner.on('end', () => this.onInnerEnd());
    inner.on('error', (err) => this.destroy(err instanceof SockgateError ? err : this.mapError(err)));
    inner.on('close', () => {
      if (!this.destroyed && !this.readableEnded && !this.confirmingEnd) this.destroy(new SocketClosedError(`data channel of ${this.socketId} closed`));
    });
    process.nextTick(() => {
      this.emit('connect');
      this.emit('ready');
    });
  }

  private mapError(err: Error): SockgateError {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ECONNRESET' || code === 'EPIPE') return new ConnectionResetError(`socket ${this.socketId} (${this.remoteUri}) was reset`, { cause: err });
    return fromSystemError(err, `socket ${this.socketId}`);
  }

  private onInnerEnd(): void {
    if (!this.confirmEof) {
      this.push(null);
      return;
    }
    // A raw TCP data connection ends the same way whether the destination sent
    // FIN or the gateway died; ask the gateway which it was.
    this.confirmingEnd = true;
    this.control.confirmEnd(this.socketId).then(
      () => {
        this.confirmingEnd = false;
        this.push(null);
      },
      (err: unknown) => {
        this.confirmingEnd = false;
        this.destroy(err as Error);
      },
    );
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.bytesWrittenTotal += chunk.length;
    if (this.inner.write(chunk)) cb();
    else this.inner.once('drain', () => cb());
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    let ok = true;
    for (const { chunk } of chunks) {
      this.bytesWrittenTotal += chunk.length;
      ok = this.inner.write(chunk);
    }
    if (ok) cb();
    else this.inner.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.inner.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const inner = this.inner as Duplex & { resetAndDestroy?: () => void };
    if (err && typeof inner.resetAndDestroy === 'function' && !inner.destroyed) inner.resetAndDestroy();
    else inner.destroy();
    if (err) void this.control.close(this.socketId).catch(() => {});
    cb(err);
  }

  /** Disable or enable Nagle on the host socket (applied by the gateway). */
  setNoDelay(noDelay = true): this {
    this.control.setOption(this.socketId, { noDelay }).catch((err) => this.emit('warning', err));
    return this;
  }

  /** Keep-alive on the host socket (applied by the gateway). */
  setKeepAlive(enable = false, initialDelayMs = 0): this {
    this.control.setOption(this.socketId, { keepAliveMs: enable ? Math.max(1, initialDelayMs) : 0 }).catch((err) => this.emit('warning', err));
    return this;
  }

  /** Like net.Socket#setTimeout: emit 'timeout' after `ms` without received bytes (0 disables). */
  setTimeout(ms: number, cb?: () => void): this {
    if (cb) this.once('timeout', cb);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (ms > 0) {
      this.idleTimer = setTimeout(() => this.emit('timeout'), ms);
      this.idleTimer.unref();
    }
    return this;
  }

  /** Idle timer of setTimeout(); refreshed by received bytes. */
  private idleTimer: NodeJS.Timeout | undefined;

  ref(): this {
    (this.inner as Duplex & { ref?: () => void }).ref?.();
    return this;
  }

  unref(): this {
    (this.inner as Duplex & { unref?: () => void }).unref?.();
    return this;
  }

  address(): { address: string; port: number; family: string } | Record<string, never> {
    return this.localAddress !== undefined ? { address: this.localAddress, port: this.localPort ?? 0, family: this.remoteFamily ?? 'IPv4' } : {};
  }
}

export interface DatagramMeta {
  socketId: string;
  transport: TransportName | 'none';
  fallbacks: FallbackInfo[];
  localUri: string;
  remoteUri: string;
  maxDatagramBytes: number;
}

/**
 * A UDP socket through the gateway: send(payload[, uri]) and 'message'
 * events (payload, { uri, address, port }), like dgram.Socket.
 */
export class GatewayDatagramSocket extends EventEmitter {
  readonly socketId: string;
  readonly transport: TransportName | 'none';
  readonly fallbacks: FallbackInfo[];
  readonly localUri: string;
  readonly remoteUri: string;
  private closed = false;

  constructor(
    private readonly channel: Duplex,
    meta: DatagramMeta,
    private readonly control: SocketControl,
    private readonly maxDatagramBytes: number,
  ) {
    super();
    this.socketId = meta.socketId;
    this.transport = meta.transport;
    this.fallbacks = meta.fallbacks;
    this.localUri = meta.localUri;
    this.remoteUri = meta.remoteUri;
    channel.on('data', (d: ChannelDatagram) => {
      const from = splitUri(d.uri || this.remoteUri);
      this.emit('message', d.payload, { uri: d.uri || this.remoteUri, address: from?.address, port: from?.port, size: d.payload.length });
    });
    channel.on('error', (err) => this.emit('error', err));
    channel.on('close', () => {
      if (!this.closed) {
        this.closed = true;
        this.emit('close');
      }
    });
  }

  /** Send one datagram; `uri` is required on an unconnected (bound) socket. Resolves once handed to the gateway. */
  send(payload: Buffer | string, uri = ''): Promise<void> {
    const buf = typeof payload === 'string' ? Buffer.from(payload) : payload;
    if (buf.length > this.maxDatagramBytes) {
      return Promise.reject(new DatagramTooLargeError(`datagram of ${buf.length} bytes exceeds the maximum of ${this.maxDatagramBytes} bytes`));
    }
    if (this.closed) return Promise.reject(new SocketClosedError(`datagram socket ${this.socketId} is closed`));
    return new Promise((resolve, reject) => {
      this.channel.write({ uri, payload: buf } satisfies ChannelDatagram, (err) => (err ? reject(err) : resolve()));
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.channel.end();
    await this.control.close(this.socketId).catch(() => {});
    this.channel.destroy();
    this.emit('close');
  }
}
