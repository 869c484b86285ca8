/**
 * The `tcp` data plane: a TCP connection to the gateway's data port per socket,
 * authenticated by the attach token in a preamble (see wire.ts). Works from
 * anywhere the data port is reachable; the fallback that always works.
 *
 * With the native addon, a stream socket's data connection and host socket go
 * to a splice link on the shared pump (native/src/splice.h): bytes move fd to
 * fd in the kernel on the I/O thread and never enter JS. Without it (or with
 * `transports.tcp_native: false`, or if the link cannot start) JS relays them.
 * Datagram sockets always use the JS framing.
 */
import { removeStaleSocket } from '../native/unix-socket-file.js';
import { createServer, type Server, type Socket } from 'node:net';
import { TransportKind, type TransportOffer } from '../proto/gen/sockgate/v1/transport.js';
import { applyHostOption } from './host-option.js';
import type { AttachRegistry } from './attach.js';
import { AttachTokenError } from './attach.js';
import type { GatewaySocket } from './socket-table.js';
import { DatagramSocket, StreamSocket } from './socket-table.js';
import type { GatewayMetrics } from './telemetry.js';
import type { Logger } from '../native/log.js';
import { LogLimiter } from './log-limiter.js';
import type { DataChannel, NativeDataChannel, NativeLink, NativeLinkEvents, OfferContext, OfferOutcome, Transport } from './transport.js';
import type { Pump } from '../native/index.js';
import type { HostSocket } from '../proto/gen/sockgate/v1/sockgate.js';
import { isSmcSocket } from './host-smc.js';
import { AttachStatus, DatagramFramer, encodeReply, parsePreamble } from '../proto/wire.js';
import { tracer } from '../native/trace.js';
import { isResumeRequest, parseResumeRequest, type ResumeRequestParse } from '../proto/resume-wire.js';

const trace = tracer('tcp');

/** Default for options.preambleTimeoutMs (limits.data_preamble_timeout_ms): a slowloris guard. */
const PREAMBLE_TIMEOUT_MS = 5_000;
/** Defaults for the unauthenticated-connection bounds (limits.max_unauthenticated_data_connections*). */
const MAX_UNAUTHENTICATED = 256;
const MAX_UNAUTHENTICATED_PER_PEER = 16;
/** Default for options.parallelOpenWaitMs (limits.data_parallel_open_wait_ms). */
const PARALLEL_OPEN_WAIT_MS = 1_000;
/** Listen backlog of an SMC data port (a plain one takes Node's default, 511). */
const DATA_PORT_BACKLOG = 511;
/** Bytes a parallel-open connection may send while its token is not issued yet (the SDK sends none but the preamble). */
const MAX_PARKED_BYTES = 65_536;
/** Refusal lines without a configured limiter: at most one per key per this interval. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

const FAILURE_STATUS: Record<AttachTokenError['failure'], AttachStatus> = {
  wrong_token: AttachStatus.WRONG_TOKEN,
  replayed: AttachStatus.REPLAYED,
  expired: AttachStatus.EXPIRED,
  wrong_transport: AttachStatus.WRONG_TRANSPORT,
};

export interface TcpTransportOptions {
  host: string;
  port: number;
  /** Host name or address clients are told to dial. */
  advertiseHost: string;
  highWatermark: number;
  maxDatagramBytes: number;
  registry: AttachRegistry<GatewaySocket>;
  metrics: GatewayMetrics;
  logger: Logger;
  /** A connection that sends no complete preamble within this time is closed. */
  preambleTimeoutMs?: number;
  /** A preamble whose token is not issued yet waits this long for its Connect (parallel open); 0: refused at once. */
  parallelOpenWaitMs?: number;
  /** Connections still in their preamble (unauthenticated), in total and per peer address; more are closed at once. */
  maxUnauthenticated?: number;
  maxUnauthenticatedPerPeer?: number;
  /** Rejections are logged through this (one line per interval, with a count of the suppressed ones). */
  refusalLog?: LogLimiter;
  /**
   * Also take data connections from VM guests over vsock, in the Firecracker /
   * Cloud Hypervisor form: a guest's connection to host port `port` arrives on
   * the Unix socket `path` (`<uds_path>_<port>`). Clients are told `port` as
   * TcpAttach.vsock_port.
   */
  vsockUds?: { path: string; port: number };
  /** The data port as an SMC listener (config smc.data_port): a listening descriptor, and marking of each accepted socket. */
  smc?: { listenFd(host: string, port: number, backlog: number): number; track(sock: object, fd: number, side: string): void; describe(sock: object): HostSocket };
  /** The vsock data port guests are told (TcpAttach.vsock_port) when their listeners are run elsewhere (vmm-listeners.ts, vsock-listeners.ts). */
  vsockPort?: number;
  /** RDMA live failover: takes a resumable attach (preamble version 2) off the data port; unset, such a preamble is VERSION_MISMATCH. */
  resume?: (sock: Socket, req: Extract<ResumeRequestParse, { state: 'ok' }>) => void;
}

/** A data connection handed in by another listener (a VM's): who it is for the bounds, and whose sockets it may attach. */
export interface HandedConnection {
  /** The key its unauthenticated-connection bound is counted under (one per VM). */
  peerKey: string;
  /** Why this connection may not attach `target` (another identity's socket), or undefined if it may. */
  mayAttach?: (target: GatewaySocket) => string | undefined;
}

/** The native relay: the addon and the gateway's shared pump. */
export interface NativeRelay {
  native: typeof import('../native/index.js');
  pump: Pump;
}

// vmm-listeners.ts imports removeStaleSocket from here; it lives in native/unix-socket-file.ts.
export { removeStaleSocket };

export class TcpTransport implements Transport {
  readonly kind = TransportKind.TRANSPORT_KIND_TCP;
  readonly version = 1;
  /** The data-port server; undefined until start(). */
  private server: Server | undefined;
  /** The vsock (VMM Unix socket) data server, when options.vsockUds is set; undefined until start(). */
  private vsockServer: Server | undefined;
  /** Data connections still in their preamble (unauthenticated); closed on shutdown. */
  private readonly handshaking = new Set<Socket>();
  /** Of those, how many per peer address. */
  private readonly handshakingPerPeer = new Map<string, number>();
  private readonly refusalLog: LogLimiter;
  private boundPort = 0;
  /** Set by useNativeRelay(): stream sockets attach to splice links on this pump. */
  private relay: NativeRelay | undefined;

  constructor(private readonly options: TcpTransportOptions) {
    this.refusalLog = options.refusalLog ?? new LogLimiter(options.logger, REFUSAL_LOG_INTERVAL_MS);
  }

  get port(): number {
    return this.boundPort;
  }

  /** RDMA live failover: where resumable attaches go (set once the rdma plane started). */
  private resumeHook: TcpTransportOptions['resume'];

  /** Take resumable attaches (preamble version 2) from now on; undefined: refuse them (VERSION_MISMATCH). */
  acceptResumes(hook: TcpTransportOptions['resume']): void {
    this.resumeHook = hook;
  }

  /** Relay stream sockets natively from now on (undefined: back to the JS relay). */
  useNativeRelay(relay: NativeRelay | undefined): void {
    this.relay = relay;
  }

  async start(): Promise<void> {
    const server = createServer({ allowHalfOpen: true, highWaterMark: this.options.highWatermark, noDelay: true } as Parameters<typeof createServer>[0]);
    const smc = this.options.smc;
    server.on('connection', (sock) => {
      if (smc) smc.track(sock, (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1, 'data-port');
      this.onConnection(sock);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const where = smc ? { fd: smc.listenFd(this.options.host, this.options.port, DATA_PORT_BACKLOG) } : { host: this.options.host, port: this.options.port };
      server.listen(where, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.options.logger.error({ err }, 'tcp data port error'));
    this.boundPort = (server.address() as { port: number }).port;
    this.server = server;
    if (this.options.vsockUds) this.vsockServer = await this.listenVsockUds(this.options.vsockUds.path);
  }

  /** The same data plane on the VMM's `<uds_path>_<port>` Unix socket. */
  private async listenVsockUds(path: string): Promise<Server> {
    removeStaleSocket(path);
    const server = createServer({ allowHalfOpen: true, highWaterMark: this.options.highWatermark } as Parameters<typeof createServer>[0]);
    server.on('connection', (sock) => {
      // A Unix stream has no reset (net throws for one): an abort closes it; the guest's SDK confirms every end over the control plane.
      sock.resetAndDestroy = () => sock.destroy();
      this.onConnection(sock);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.options.logger.error({ err, path }, 'vsock data socket error'));
    return server;
  }

  accept(_offer: TransportOffer, _ctx: OfferContext): OfferOutcome {
    return {
      ok: true,
      accepted: {
        kind: TransportKind.TRANSPORT_KIND_TCP,
        version: this.version,
        params: { $case: 'tcp', tcp: { host: this.options.advertiseHost, port: this.boundPort, vsockPort: this.options.vsockUds?.port ?? this.options.vsockPort ?? 0 } },
      },
    };
  }

  /** A stream connection accepted by another listener (a VM's Unix socket, a bridged AF_VSOCK one): served as the data port's own. */
  handleConnection(sock: Socket, from: HandedConnection): void {
    // A Unix stream has no reset (net throws for one): an abort closes it; the guest's SDK confirms every end over the control plane.
    sock.resetAndDestroy = () => sock.destroy();
    this.onConnection(sock, from);
  }

  private onConnection(sock: Socket, from?: HandedConnection): void {
    // Unix (vsock) connections have no address: they share one key, unless their listener named one.
    const peer = from?.peerKey ?? sock.remoteAddress ?? 'local';
    const fromPeer = this.handshakingPerPeer.get(peer) ?? 0;
    const maxTotal = this.options.maxUnauthenticated ?? MAX_UNAUTHENTICATED;
    const maxPerPeer = this.options.maxUnauthenticatedPerPeer ?? MAX_UNAUTHENTICATED_PER_PEER;
    if (this.handshaking.size >= maxTotal || fromPeer >= maxPerPeer) {
      // Before any byte is read: closed at once, counted, logged at most once per interval.
      sock.on('error', () => {});
      sock.destroy();
      this.options.metrics.recordAttach('tcp', 'error');
      const which = fromPeer >= maxPerPeer ? `${fromPeer} from this peer (limits.max_unauthenticated_data_connections_per_peer)` : `${this.handshaking.size} in total (limits.max_unauthenticated_data_connections)`;
      this.refusalLog.warn('tcp-unauthenticated-limit', { peer }, `tcp data connection refused: already ${which} without a preamble`);
      return;
    }
    this.handshaking.add(sock);
    this.handshakingPerPeer.set(peer, fromPeer + 1);
    let received: Buffer = Buffer.alloc(0);
    const timer = setTimeout(
      () => (parked ? reject(AttachStatus.WRONG_TOKEN, 'its token was not issued within the preamble timeout (parallel open)') : reject(AttachStatus.BAD_PREAMBLE, 'no preamble in time')),
      this.options.preambleTimeoutMs ?? PREAMBLE_TIMEOUT_MS,
    );
    let cleaned = false;
    const cleanup = () => {
      clearTimeout(timer);
      parked?.();
      parked = undefined;
      sock.removeListener('data', onData);
      sock.removeListener('error', onError);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onClose);
      if (cleaned) return;
      cleaned = true;
      this.handshaking.delete(sock);
      const n = (this.handshakingPerPeer.get(peer) ?? 1) - 1;
      if (n > 0) this.handshakingPerPeer.set(peer, n);
      else this.handshakingPerPeer.delete(peer);
    };
    const reject = (status: AttachStatus, detail: string) => {
      cleanup();
      // The client may reset while the refusal goes out: that is no error of ours.
      sock.on('error', () => {});
      trace(`reject data connection from ${sock.remoteAddress}:${sock.remotePort}: ${detail}`);
      // An unauthenticated peer can cause this at will: one line per interval per status, with a count.
      this.refusalLog.warn(`tcp-attach-${AttachStatus[status]}`, { peer: `${sock.remoteAddress}:${sock.remotePort}`, status: AttachStatus[status], detail }, 'tcp attach rejected');
      const result = status === AttachStatus.REPLAYED ? 'replayed' : status === AttachStatus.EXPIRED ? 'expired' : status === AttachStatus.WRONG_TOKEN ? 'wrong_token' : 'error';
      this.options.metrics.recordAttach('tcp', result);
      sock.end(encodeReply(status));
      sock.destroySoon();
      setTimeout(() => sock.destroy(), 1000).unref();
    };
    const onError = () => {
      cleanup();
      sock.destroy();
    };
    const onEnd = () => reject(AttachStatus.BAD_PREAMBLE, 'connection ended inside the preamble');
    // A peer that resets without an error event (or is destroyed at shutdown) must not keep its count.
    const onClose = () => cleanup();
    // Parallel open: a preamble whose token is not issued yet waits for it (its Connect is in flight),
    // still counted as unauthenticated and still under the preamble timeout.
    let parked: (() => void) | undefined;
    let waited = false;
    const tryAttach = (): void => {
      const resume = this.resumeHook ?? this.options.resume;
      if (resume && isResumeRequest(received)) {
        const r = parseResumeRequest(received);
        if (r.state === 'need-more') return;
        if (r.state === 'bad') return reject(r.status, r.detail);
        cleanup();
        sock.pause();
        return resume(sock, r);
      }
      const p = parsePreamble(received);
      if (p.state === 'need-more') return;
      if (p.state === 'bad') return reject(p.status, p.detail);
      let target: GatewaySocket;
      try {
        target = this.options.registry.redeem(p.token, TransportKind.TRANSPORT_KIND_TCP);
      } catch (err) {
        const waitMs = this.options.parallelOpenWaitMs ?? PARALLEL_OPEN_WAIT_MS;
        if (err instanceof AttachTokenError && err.failure === 'wrong_token' && !waited && waitMs > 0) {
          waited = true;
          const cancel = this.options.registry.park(p.token, () => {
            clearTimeout(parkTimer);
            parked = undefined;
            if (!cleaned) tryAttach();
          });
          const parkTimer = setTimeout(() => reject(AttachStatus.WRONG_TOKEN, `its token was not issued within ${waitMs} ms (limits.data_parallel_open_wait_ms)`), waitMs);
          parked = cancel
            ? () => {
                clearTimeout(parkTimer);
                cancel();
              }
            : undefined;
          if (parked) return;
          clearTimeout(parkTimer);
        }
        if (err instanceof AttachTokenError) return reject(FAILURE_STATUS[err.failure], err.message);
        return reject(AttachStatus.INTERNAL, (err as Error).message);
      }
      const refused = from?.mayAttach?.(target);
      if (refused) return reject(AttachStatus.WRONG_TOKEN, refused);
      cleanup();
      sock.pause();
      if (p.rest.length) sock.unshift(p.rest);
      this.options.metrics.recordAttach('tcp', 'ok');
      this.attach(target, sock);
    };
    const onData = (chunk: Buffer) => {
      received = received.length ? Buffer.concat([received, chunk]) : chunk;
      if (!parked) return tryAttach();
      if (received.length > MAX_PARKED_BYTES) reject(AttachStatus.BAD_PREAMBLE, `more than ${MAX_PARKED_BYTES} bytes before the token was issued`);
    };
    sock.on('data', onData);
    sock.on('error', onError);
    sock.on('end', onEnd);
    sock.on('close', onClose);
  }

  /** Hand a redeemed data connection to its socket; the OK reply goes out first on every path. */
  private attach(target: GatewaySocket, sock: Socket): void {
    let channel: DataChannel;
    const smc = this.options.smc;
    // GetInfo's data_connection: what the kernel made of an SMC data connection (SMC-R, or its fallback reason).
    if (smc && isSmcSocket(sock)) target.dataConnection = () => smc.describe(sock);
    if (target instanceof StreamSocket) {
      if (this.relay && this.attachNative(target, sock, this.relay)) return;
      sock.write(encodeReply(AttachStatus.OK));
      sock.setNoDelay(true);
      channel = { transport: this.kind, mode: 'stream', stream: sock };
      target.attach(channel);
    } else if (target instanceof DatagramSocket) {
      sock.write(encodeReply(AttachStatus.OK));
      channel = { transport: this.kind, mode: 'datagram', stream: new DatagramFramer(sock, this.options.maxDatagramBytes) };
      target.attach(channel);
    } else {
      sock.destroy();
    }
  }

  /**
   * Attach through a splice link. The socket dups its host descriptor into
   * start(); start() dups the data connection's, and the link writes the OK
   * reply and whatever the host had already sent to the client, and the
   * client's bytes after its preamble to the host, before relaying. Node's
   * copy of the data connection is then closed without sending anything.
   * Returns false, with the data connection untouched, if the link did not
   * start: the caller falls back to the JS relay.
   */
  private attachNative(target: StreamSocket, sock: Socket, relay: NativeRelay): boolean {
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return false;
    // An SMC data connection is not spliced either (see NativeDataChannel.splices).
    if (isSmcSocket(sock)) return false;
    // Already read from the client (the bytes after the preamble, at least): for the host first.
    const early: Buffer[] = [];
    for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) early.push(b);
    let started = false;
    const channel: NativeDataChannel = {
      transport: this.kind,
      mode: 'native',
      splices: true,
      start: (hostFd, hostPrefix, events) => {
        const link = this.startSplice(relay, fd, hostFd, early, [encodeReply(AttachStatus.OK), ...hostPrefix], events);
        started = true;
        sock.removeAllListeners();
        sock.on('error', () => {});
        sock.destroy();
        return link;
      },
    };
    try {
      target.attach(channel);
      return true;
    } catch (err) {
      if (started) throw err;
      trace(`native attach of ${target.id} did not start (${(err as Error).message}): JS relay`);
      if (early.length) sock.unshift(Buffer.concat(early));
      return false;
    }
  }

  /** dup() both descriptors and start the splice link (the caller keeps its own fds either way). */
  private startSplice(relay: NativeRelay, clientFd: number, hostFd: number, toHost: Buffer[], toClient: Buffer[], events: NativeLinkEvents): NativeLink {
    const { native, pump } = relay;
    const c = native.dupFd(clientFd);
    let h: number;
    try {
      h = native.dupFd(hostFd);
    } catch (err) {
      native.closeFd(c);
      throw err;
    }
    // The reply and the host bytes the socket already counted open the client's stream: not new host payload.
    let notFromHost = toClient.reduce((n, b) => n + b.length, 0);
    try {
      const link = pump.splice(c, h, {
        toHostPrefix: toHost,
        toClientPrefix: toClient,
        pipeBytes: this.options.highWatermark,
        onProgress: (toHostBytes, toClientBytes) => {
          const skip = Math.min(notFromHost, toClientBytes);
          notFromHost -= skip;
          events.progress(toHostBytes, toClientBytes - skip);
        },
        onHostEof: () => events.hostEnded?.(),
        onClientEof: () => events.clientEnded?.(),
      });
      trace(`splice link ${link.id}: client fd ${c}, host fd ${h}, pipes of ${link.pipeBytes} bytes`);
      return {
        ended: link.ended,
        close: () => link.close(),
        shutdownHost: (read, write) => link.shutdownHost(read, write),
        bufferedBytes: () => link.bufferedBytes(),
        setHostOption: (o) => applyHostOption(link, o, (err) => link.raw.closed || /ended/.test(String(err.message))),
        // Not in the seam: lets tests (and debugging) read what SetOption did to the descriptor.
        getHostSockopt: (name: 'SO_SNDBUF' | 'SO_RCVBUF' | 'TCP_NODELAY' | 'SO_KEEPALIVE') => link.getHostSockopt(name),
      } as NativeLink;
    } catch (err) {
      native.closeFd(c);
      native.closeFd(h);
      throw err;
    }
  }

  async close(): Promise<void> {
    for (const s of this.handshaking) s.destroy();
    this.handshaking.clear();
    this.handshakingPerPeer.clear();
    // Stop accepting; attached data connections belong to their sockets, which the table drains.
    this.server?.close();
    this.server = undefined;
    this.vsockServer?.close();
    this.vsockServer = undefined;
  }
}
