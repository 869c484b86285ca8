/**
 * The SDK's sockets: a stream socket is a Node Duplex over whatever data
 * channel was attached (a TCP data connection, a gRPC stream, later a ring),
 * shaped like net.Socket where it matters; a datagram socket is an
 * EventEmitter with send() and 'message', shaped like dgram.Socket.
 */
import { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import type { Fallback } from '../../proto/gen/sockgate/v1/transport.js';
import { DeclineReason, declineReasonToJSON } from '../../proto/gen/sockgate/v1/transport.js';
import { ConnectionResetError, fromServiceError, DatagramTooLargeError, SocketClosedError, SockgateError, WrongSocketKindError, fromSystemError } from '../../proto/errors.js';
import type { ChannelDatagram } from '../../proto/wire.js';
import type { ShmReadLoan } from './shm-channel.js';
import { transportLabel, type TransportName } from '../../proto/transports.js';
import { dataConnectionInfo, type DataConnectionInfo } from './smc-dial.js';

// Transport names live in proto/transports.ts; these are the SDK's names for them.
export { TRANSPORT_KINDS, transportLabel as transportNameOf, type TransportName } from '../../proto/transports.js';

/** A passed-over transport and why, as the SDK reports it. */
export interface FallbackInfo {
  transport: TransportName | 'none';
  /** Stable reason code, e.g. NOT_COLOCATED. */
  reason: string;
  detail: string;
}

export function fallbackInfo(f: Fallback): FallbackInfo {
  return {
    transport: transportLabel(f.kind),
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

/** What a GatewaySocket needs to open itself: the gateway connection's opener. */
export interface SocketOpener {
  /** Run Connect + attach for `uri`; resolves with the attached channel. */
  open(uri: string, signal: AbortSignal): Promise<{ inner: Duplex; meta: SocketMeta; confirmEof: boolean }>;
}

/** `connect()` arguments, as net.Socket takes them, or a sockgate URI. */
export type ConnectTarget = string | number | { port: number; host?: string; uri?: string };

function targetUri(target: ConnectTarget, host?: string): string {
  if (typeof target === 'string' && target.includes('://')) return target;
  const port = typeof target === 'object' ? target.port : Number(target);
  const h = (typeof target === 'object' ? (target.uri ?? target.host) : host) ?? 'localhost';
  if (h.includes('://')) return h;
  return h.includes(':') ? `tcp6://[${h}]:${port}` : `tcp://${h}:${port}`;
}

/**
 * A stream socket through the gateway, shaped like net.Socket where libraries
 * look: created unconnected or connecting, `connect()`, 'connect' and 'ready'
 * events, `connecting`, setNoDelay, setKeepAlive, setTimeout, remoteAddress,
 * remotePort, end() half-closes, destroy(err) aborts. Writes made while
 * connecting are held (bounded by the writable high watermark) until attached.
 */
export class GatewaySocket extends Duplex {
  /** Gateway socket id; '' until connected. */
  socketId = '';
  /** Transport the bytes ride; 'none' until connected. */
  transport: TransportName | 'none' = 'none';
  /** Transports passed over before this one, with reasons. */
  fallbacks: FallbackInfo[] = [];
  /** Moves of the open socket to another transport (RDMA live failover), oldest first; `transport` is the current one. */
  moves: Array<{ from: TransportName; to: TransportName; cause: string; atMs: number }> = [];
  /** Host-side local address of the gateway's socket. */
  localUri = '';
  /** The destination as the gateway connected it. */
  remoteUri = '';
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  remoteFamily: string | undefined;
  localAddress: string | undefined;
  localPort: number | undefined;
  /** True between connect() and 'connect', like net.Socket. */
  connecting = false;
  /** Bytes received from the destination. */
  bytesRead = 0;
  /** Bytes handed to the gateway for the destination. */
  bytesWrittenTotal = 0;
  /** net.Socket compatibility: true until attached. */
  get pending(): boolean {
    return this.inner === undefined;
  }
  /** The attached channel; undefined until connected. */
  private inner: Duplex | undefined;
  /**
   * How the kernel carries the tcp-plane data connection: tcp, or smc with the
   * mode the kernel chose or its fallback reason (SMC_DIAG, read now; see
   * GatewayOptions.smc). Undefined before attach and on other planes.
   */
  dataConnection(): DataConnectionInfo | undefined {
    return this.inner ? dataConnectionInfo(this.inner) : undefined;
  }
  /**
   * Whether the channel's end must be confirmed over the control plane: the raw
   * tcp plane, whose FIN looks the same whether the destination ended or the
   * gateway died. Not rdma: its channel holds an EOF back until the connection
   * said the slot ended cleanly (the gateway's EOF message, after its last
   * byte) or failed (see fd-channel.ts); not shm and grpc, which carry the end
   * in their own framing.
   */
  private confirmEof = false;
  /** True while the inner end-of-stream is being confirmed. */
  private confirmingEnd = false;
  /** The channel delivered its end of stream. */
  private innerEnded = false;
  /** Aborts an open in progress when the socket is destroyed. */
  private readonly opening = new AbortController();
  /** A write or end held while connecting: runs once attached. */
  private held: (() => void) | undefined;
  /** Idle timer of setTimeout(); refreshed by received bytes. */
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly control: SocketControl,
    private readonly opener: SocketOpener | undefined,
    options: { highWaterMark?: number } = {},
  ) {
    super({ allowHalfOpen: true, highWaterMark: options.highWaterMark ?? 1 << 20 });
  }

  /**
   * Connect through the gateway: `connect(port, host)`, `connect({port, host})`
   * or `connect('tcp://host:port')`. Emits 'connect' when attached, 'error' if not.
   */
  connect(target: ConnectTarget, host?: string | (() => void), cb?: () => void): this {
    const callback = typeof host === 'function' ? host : cb;
    const hostName = typeof host === 'string' ? host : undefined;
    if (!this.opener) throw new SocketClosedError('this socket has no gateway to connect through');
    if (this.connecting || this.inner) throw new SocketClosedError('socket is already connecting or connected');
    if (callback) this.once('connect', callback);
    this.connecting = true;
    let uri: string;
    try {
      uri = targetUri(target, hostName);
    } catch (err) {
      process.nextTick(() => this.destroy(err as Error));
      return this;
    }
    this.opener.open(uri, this.opening.signal).then(
      ({ inner, meta, confirmEof }) => {
        if (this.destroyed) {
          inner.destroy();
          void this.control.close(meta.socketId).catch(() => {});
          return;
        }
        this.attachInner(inner, meta, confirmEof);
      },
      (err: Error) => this.destroy(err),
    );
    return this;
  }

  /** Bind an attached channel (used by the SDK for accepted sockets and by connect()). */
  attachInner(inner: Duplex, meta: SocketMeta, confirmEof: boolean): void {
    this.inner = inner;
    this.confirmEof = confirmEof;
    // RDMA live failover: the same socket continues on another transport (no error, no close).
    inner.on('moved', (m: GatewaySocket['moves'][number]) => {
      this.moves.push(m);
      this.transport = m.to;
      // A FIN on the tcp data connection looks the same when the gateway dies: confirm ends from now on.
      // (A new rdma connection's EOF is a cursor-checked message: genuine, as before the move.)
      if (m.to !== 'rdma') this.confirmEof = true;
    });
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
      // A channel that closes before its end of stream is an abort; after it, what we
      // buffered is still the reader's (readableEnded waits for the reader, not for us).
      if (!this.destroyed && !this.innerEnded && !this.confirmingEnd) this.destroy(new SocketClosedError(`data channel of ${this.socketId} closed`));
    });
    this.connecting = false;
    const held = this.held;
    this.held = undefined;
    held?.();
    // Reads flow until the readable side is full; push() returning false pauses the channel again.
    inner.resume();
    this.emit('connect');
    this.emit('ready');
  }

  private mapError(err: Error): SockgateError {
    // A gRPC status (grpc plane): its sockgate code, if the gateway sent one, decides the class.
    if (typeof (err as { code?: unknown }).code === 'number') return fromServiceError(err);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ECONNRESET' || code === 'EPIPE') return new ConnectionResetError(`socket ${this.socketId} (${this.remoteUri}) was reset`, { cause: err });
    return fromSystemError(err, `socket ${this.socketId}`);
  }

  private onInnerEnd(): void {
    this.innerEnded = true;
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
    const inner = this.inner;
    if (inner && !inner.readableEnded && !inner.destroyed) inner.resume();
  }

  override _write(chunk: Buffer, enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const inner = this.inner;
    if (!inner) {
      this.held = () => this._write(chunk, enc, cb);
      return;
    }
    this.bytesWrittenTotal += chunk.length;
    if (inner.write(chunk)) cb();
    else inner.once('drain', () => cb());
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    const inner = this.inner;
    if (!inner) {
      this.held = () => this._writev(chunks, cb);
      return;
    }
    let ok = true;
    for (const { chunk } of chunks) {
      this.bytesWrittenTotal += chunk.length;
      ok = inner.write(chunk);
    }
    if (ok) cb();
    else inner.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    const inner = this.inner;
    if (!inner) {
      this.held = () => this._final(cb);
      return;
    }
    // Finished only once the channel took every byte: autoDestroy destroys the
    // channel after this, and destroying one with writes still queued drops them.
    inner.end((err?: Error | null) => cb(err ?? null));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.opening.abort();
    this.connecting = false;
    const inner = this.inner as (Duplex & { resetAndDestroy?: () => void }) | undefined;
    if (inner) {
      // Reset (not FIN) on abort, except after our FIN: libuv cannot reset a shut-down socket.
      // Only a TCP handle can be reset (net.Socket throws for a Unix socket, e.g. a vsock relay's):
      // channels over socketpairs abort their own way (rdma: closes the slot) or just close.
      if (err && typeof inner.resetAndDestroy === 'function' && !inner.destroyed && !inner.writableEnded) {
        try {
          inner.resetAndDestroy();
        } catch {
          inner.destroy();
        }
      } else inner.destroy();
      if (err) void this.control.close(this.socketId).catch(() => {});
    }
    cb(err);
  }

  /**
   * Zero-copy reads (shm transport only): an async iterator of loans over the
   * ring's bytes, each valid until its `release()`, which must come before
   * the next loan is asked for (using a released loan's `view` throws). While
   * loans are taken the socket delivers no 'data' (its 'end' still comes); a
   * write waits while a loan is out. Call it before any byte was read.
   */
  readLoans(): AsyncIterableIterator<ShmReadLoan> {
    const inner = this.inner as (Duplex & { loans?: () => AsyncIterableIterator<ShmReadLoan> }) | undefined;
    if (!inner || typeof inner.loans !== 'function') throw new WrongSocketKindError(`zero-copy reads need the shm transport; socket ${this.socketId || '(unconnected)'} rides ${this.transport}`);
    if (this.bytesRead > 0 || this.readableLength > 0) throw new WrongSocketKindError(`socket ${this.socketId}: bytes were already read through the stream; zero-copy reads must start before any`);
    const loans = inner.loans();
    // The stream carries no data from now on, only its end: let it flow so 'end' and 'close' come.
    this.resume();
    return loans;
  }

  /** Disable or enable Nagle on the host socket (applied by the gateway). */
  setNoDelay(noDelay = true): this {
    this.whenConnected(() => this.control.setOption(this.socketId, { noDelay }));
    return this;
  }

  /** Keep-alive on the host socket (applied by the gateway). */
  setKeepAlive(enable = false, initialDelayMs = 0): this {
    this.whenConnected(() => this.control.setOption(this.socketId, { keepAliveMs: enable ? Math.max(1, initialDelayMs) : 0 }));
    return this;
  }

  private whenConnected(fn: () => Promise<void>): void {
    const run = () => void fn().catch((err: Error) => this.emit('warning', err));
    if (this.inner) run();
    else this.once('connect', run);
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

  ref(): this {
    (this.inner as (Duplex & { ref?: () => void }) | undefined)?.ref?.();
    return this;
  }

  unref(): this {
    (this.inner as (Duplex & { unref?: () => void }) | undefined)?.unref?.();
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
