/**
 * A TCP stream socket of the gateway: the host socket spliced with the data
 * channel its transport attached (a JS duplex, or a native link).
 *
 * Buffers are bounded everywhere: every stream is created with the configured
 * high watermark, and a direction pauses its source while its sink is above it
 * (Envoy's tcp_proxy does the same with read-disable). Half-close passes through.
 */
import type { Socket as NetSocket } from 'node:net';
import type { Duplex } from 'node:stream';
import { RingCorruptError, SocketClosedError, SockgateError, WrongSocketKindError, fromSystemError } from '../proto/errors.js';
import type { Identity } from './policy.js';
import type { DataChannel, JsDataChannel, NativeDataChannel, NativeLink, NativeLinkEnd } from './data-channel.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { formatUri } from '../proto/uri.js';
import { GatewaySocket, transportName } from './gateway-socket.js';
import { isSmcSocket } from './host-smc.js';

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
    if (channel.splices && isSmcSocket(this.host)) throw new WrongSocketKindError(`socket ${this.id}: an SMC host socket is not spliced`);
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
