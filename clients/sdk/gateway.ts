/**
 * The SDK entry point: a connection to one sockgate gateway, from which
 * sockets are opened. `Gateway.connect(target)` then `gw.connect('tcp://db:5432')`
 * gives a Duplex; `gw.listen()` a server of incoming sockets; `gw.udp()` a
 * datagram socket.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { credentials as grpcCredentials, makeGenericClientConstructor, Metadata, status, type CallOptions, type ChannelCredentials, type ServiceDefinition, type ServiceError } from '@grpc/grpc-js';
import {
  AdminServiceClient,
  ShutdownHow,
  SocketGatewayServiceClient,
  SocketGatewayServiceService,
  SocketState,
  type AcceptResponse,
  type ListSocketsResponse,
  type SocketInfo,
  type SocketOption,
} from '../../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, type Accepted, type NegotiationResult, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import type { ShmClient } from './attach-shm.js';
import { RdmaSocket } from './attach-rdma.js';
import { bridgeToFd } from './fd-bridge.js';
import type { CallOpts, ConnectOptions } from './call-options.js';
import { ConnectGate } from './connect-gate.js';
import { EndConfirmer } from './end-confirm.js';
import { ParallelOpen } from './tcp-parallel.js';
import { dataConnectionInfo, smcDialOf } from './smc-dial.js';
import { TransportAttacher } from './transport-attach.js';
import { linkChannel, type GatewayLink, type LinkDeps, type LinkOptions } from './link.js';
import { openVsockBridge, parseVsockTarget, type VsockBridge } from './vsock.js';
import {
  AbortedError,
  GatewayUnavailableError,
  NoTransportError,
  SockgateError,
  fromServiceError,
} from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import { defaultTransports, type GatewayOptions, type UdpOptions } from './gateway-options.js';
import { GatewayServer } from './gateway-server.js';
import type { LinkableSocket, OpenedStream } from './opened-socket.js';
import { withFastDataCodec } from '../../proto/wire.js';
import {
  GatewayDatagramSocket,
  GatewaySocket,
  fallbackInfo,
  transportNameOf,
  type FallbackInfo,
  type SocketControl,
  type SocketMeta,
  type TransportName,
} from './socket.js';

/** SOCKGATE_TRACE=sdk: the SDK's connect steps on stderr. */
const trace = tracer('sdk');

/** The generated client, with the grpc plane's payload frames on the hand codec (proto/wire.ts). */
const FastSocketGatewayClient = makeGenericClientConstructor(
  withFastDataCodec(SocketGatewayServiceService) as unknown as ServiceDefinition,
  'sockgate.v1.SocketGatewayService',
) as unknown as typeof SocketGatewayServiceClient;

/** A Connect that failed this soon with "Connection dropped" went out on a dying connection: it is retried once. */
const CONNECTION_DROPPED_RETRY_MS = 1_000;
/** How long the gateway has to confirm that a tcp-plane stream really ended. */
const CONFIRM_DEADLINE_MS = 3_000;
/** Default deadline of a control call. */
const DEFAULT_DEADLINE_MS = 15_000;
/** Datagram limit the SDK checks before sending (the gateway checks again). */
const MAX_DATAGRAM_BYTES = 65507;
/** ListSockets pages followed at most (1,000 sockets a page by default: far beyond any table). */
const MAX_LIST_PAGES = 1_000;
/** Stream connects in flight per Gateway: below the gateway's default pending (256/identity) and waiting data-connection (128/peer) bounds. */
const DEFAULT_CONCURRENT_CONNECTS = 128;
/** Connects that may queue for a turn: a bound on the queue, far above any real burst. */
const DEFAULT_WAITING_CONNECTS = 65_536;

type Unary<Req, Res> = (req: Req, md: Metadata, opts: Partial<CallOptions>, cb: (err: ServiceError | null, res: Res) => void) => { cancel(): void };


export class Gateway {
  private readonly client: SocketGatewayServiceClient;
  private readonly adminClient: AdminServiceClient;
  /** Sent with every call: credentials, and wait-for-ready so calls ride out a reconnect until their deadline. */
  private readonly metadata = new Metadata({ waitForReady: true });
  /** The same credentials for calls that must fail fast when the gateway is gone. */
  private readonly metadataNoWait = new Metadata();
  private readonly offersDefault: readonly TransportName[];
  private readonly deadlineMs: number;
  /** Everything open through this gateway object, closed by close(). */
  private readonly open = new Set<{ destroy(err?: Error): unknown }>();
  private readonly control: SocketControl;
  /** Attaches accepted offers by transport (shm and rdma sessions, tcp and grpc planes). */
  private readonly attacher: TransportAttacher;
  /** Bounds the stream connects in flight (GatewayOptions.maxConcurrentConnects). */
  private readonly connectGate: ConnectGate;
  /** The tcp plane's end-of-stream confirmations, batched. */
  private readonly endConfirmer: EndConfirmer;
  /** The tcp plane's data connection opened alongside the Connect. */
  private readonly parallel: ParallelOpen;

  private constructor(
    readonly target: string,
    options: GatewayOptions,
    /** With a `vsock:` target: the private Unix socket grpc-js dials, relayed to vsock; data connections dial vsock too. */
    private readonly vsock?: VsockBridge,
  ) {
    const creds: ChannelCredentials = options.tls
      ? grpcCredentials.createSsl(options.tls.ca ?? null, options.tls.key ?? null, options.tls.cert ?? null)
      : grpcCredentials.createInsecure();
    const channelOptions = {
      'grpc.max_receive_message_length': 4 << 20,
      'grpc.max_send_message_length': 4 << 20,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 5_000,
    };
    const grpcTarget = vsock ? `unix:${vsock.path}` : target;
    this.client = new FastSocketGatewayClient(grpcTarget, creds, channelOptions);
    this.adminClient = new AdminServiceClient(grpcTarget, creds, channelOptions);
    const token = options.token ?? options.identity?.token;
    if (token) {
      this.metadata.set('authorization', `Bearer ${token}`);
      this.metadataNoWait.set('authorization', `Bearer ${token}`);
    }
    this.offersDefault = options.transports ?? defaultTransports(target);
    this.connectGate = new ConnectGate(options.maxConcurrentConnects ?? DEFAULT_CONCURRENT_CONNECTS, options.maxWaitingConnects ?? DEFAULT_WAITING_CONNECTS);
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.parallel = new ParallelOpen(!vsock && options.parallelOpen !== false, smcDialOf(options));
    this.attacher = new TransportAttacher({ options, vsock, parallel: this.parallel, grpcData: () => this.client.data(this.metadata) });
    // No wait-for-ready: a gateway that is gone must not be waited for, nor its successor asked.
    const noWait = { deadlineMs: CONFIRM_DEADLINE_MS, waitForReady: false };
    this.endConfirmer = new EndConfirmer(async (socketIds) => {
      try {
        return (await this.unary(this.client.confirmEnds, { socketIds }, noWait)).states;
      } catch (err) {
        // A gateway from before ConfirmEnds: one GetInfo each.
        if ((err as { cause?: { code?: unknown } }).cause?.code !== status.UNIMPLEMENTED) throw err;
        return Promise.all(socketIds.map(async (socketId) => (await this.unary(this.client.getInfo, { socketId }, noWait)).info?.state ?? SocketState.SOCKET_STATE_UNSPECIFIED));
      }
    }, target);
    this.control = {
      setOption: async (id, o) => {
        const option: SocketOption = {
          option:
            o.noDelay !== undefined
              ? { $case: 'noDelay', noDelay: o.noDelay }
              : o.keepAliveMs !== undefined
                ? { $case: 'keepAliveMs', keepAliveMs: o.keepAliveMs }
                : o.sendBufferBytes !== undefined
                  ? { $case: 'sendBufferBytes', sendBufferBytes: o.sendBufferBytes }
                  : { $case: 'recvBufferBytes', recvBufferBytes: o.recvBufferBytes ?? 0 },
        };
        await this.unary(this.client.setOption, { socketId: id, option });
      },
      shutdown: async (id, how) => {
        const h = how === 'read' ? ShutdownHow.SHUTDOWN_HOW_READ : how === 'write' ? ShutdownHow.SHUTDOWN_HOW_WRITE : ShutdownHow.SHUTDOWN_HOW_BOTH;
        await this.unary(this.client.shutdown, { socketId: id, how: h });
      },
      close: async (id) => {
        await this.unary(this.client.closeSocket, { socketId: id });
      },
      // Positive confirmation only, from the gateway process that owns the socket (ids carry a
      // per-process suffix; closed sockets stay on record a minute), batched (end-confirm.ts).
      confirmEnd: (id) => this.endConfirmer.confirm(id),
    };
  }

  /**
   * Connect to a gateway (`host:port`, `unix:/path`, or `vsock:CID:PORT` from a
   * VM guest, e.g. `vsock:2:7070`); resolves once the control channel is ready.
   */
  static async connect(target: string, options: GatewayOptions = {}, opts: CallOpts = {}): Promise<Gateway> {
    const vsockAddr = parseVsockTarget(target);
    const gw = new Gateway(target, options, vsockAddr ? await openVsockBridge(vsockAddr) : undefined);
    const deadline = Date.now() + (opts.deadlineMs ?? gw.deadlineMs);
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(new AbortedError('Gateway.connect aborted'));
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        gw.client.waitForReady(deadline, (err) => {
          opts.signal?.removeEventListener('abort', onAbort);
          const why = gw.vsock?.lastError ? ` (${gw.vsock.lastError.message})` : '';
          if (err) reject(new GatewayUnavailableError(`gateway ${target} not reachable: ${err.message}${why}`, { cause: gw.vsock?.lastError ?? err }));
          else resolve();
        });
      });
    } catch (err) {
      gw.close();
      throw err;
    }
    return gw;
  }

  /** One unary call with metadata, deadline, AbortSignal and typed errors. */
  private unary<Req, Res>(fn: Unary<Req, Res>, req: Req, opts: CallOpts & { waitForReady?: boolean } = {}): Promise<Res> {
    if (opts.signal?.aborted) return Promise.reject(new AbortedError('aborted before the call'));
    return new Promise((resolve, reject) => {
      const md = opts.waitForReady === false ? this.metadataNoWait : this.metadata;
      const call = fn.call(this.client, req, md, { deadline: Date.now() + (opts.deadlineMs ?? this.deadlineMs) }, (err, res) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(fromServiceError(err));
        else resolve(res);
      });
      const onAbort = () => call.cancel();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private offers(names: readonly TransportName[] | undefined): { offers: TransportOffer[]; local: FallbackInfo[] } {
    const offers: TransportOffer[] = [];
    const local: FallbackInfo[] = [];
    for (const name of names ?? this.offersDefault) {
      const o = this.attacher.offer(name);
      if ('local' in o) local.push(o.local);
      else offers.push(o.offer);
    }
    if (!offers.length) throw new NoTransportError(`none of the requested transports (${(names ?? []).join(', ')}) is supported by this SDK`);
    return { offers, local };
  }

  /**
   * Open a TCP socket to `uri` through the gateway; resolves once attached.
   * (Connected UDP: use udp().)
   */
  connect(uri: string, opts: ConnectOptions = {}): Promise<GatewaySocket> {
    const sock = this.socket(opts);
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      sock.once('error', onError);
      sock.connect(uri, () => {
        sock.removeListener('error', onError);
        resolve(sock);
      });
    });
  }

  /**
   * net.createConnection's twin: returns a connecting socket at once; 'connect'
   * (and `cb`) follow once attached. Fits `http.Agent#createConnection`,
   * pg's `stream` option and anything else that wants a socket synchronously.
   */
  createConnection(target: string | { port: number; host?: string }, cb?: () => void, opts: ConnectOptions = {}): GatewaySocket {
    return this.socket(opts).connect(target, cb);
  }

  /** An unconnected socket; call `connect(port, host)` or `connect(uri)` on it (pg calls it itself). */
  socket(opts: ConnectOptions = {}): GatewaySocket {
    const sock = new GatewaySocket(this.control, { open: (uri, signal) => this.openChannel(uri, opts, signal) });
    this.track(sock);
    return sock;
  }

  /**
   * Join `socket` (a connected net.Socket, or a stream fd the link owns from
   * the call on) to a new gateway socket to `uri`: the payload moves natively
   * where the addon and the transport allow, else through the JS relay (the
   * handle says which and why). See link.ts.
   */
  async link(socket: Socket | number, uri: string, opts: LinkOptions = {}): Promise<GatewayLink> {
    if (typeof socket !== 'number') socket.pause();
    return (await this.openForLink(uri, opts)).link(socket, opts);
  }

  /**
   * Connect + attach like link(), but link later: for a caller that must
   * answer its own client first (SOCKS5 replies with the bound address).
   */
  async openForLink(uri: string, opts: ConnectOptions = {}): Promise<LinkableSocket> {
    const { inner, meta, confirmEof } = await this.openChannel(uri, opts);
    return this.linkable(inner, meta, confirmEof);
  }

  private linkable(inner: Duplex, meta: SocketMeta, confirmEof: boolean): LinkableSocket {
    return {
      meta,
      link: (target, lo = {}) => linkChannel(this.linkDeps(), target, { inner, meta, confirmEof }, lo),
      destroy: () => {
        inner.destroy();
        void this.control.close(meta.socketId).catch(() => {});
      },
    };
  }

  /** @internal What link.ts needs of this gateway. */
  linkDeps(): LinkDeps {
    return {
      wrap: (inner, meta, confirmEof) => {
        const s = new GatewaySocket(this.control, undefined);
        this.track(s);
        s.attachInner(inner, meta, confirmEof);
        return s;
      },
      closeRemote: (id) => this.control.close(id).catch(() => {}),
      confirmEnd: (id) => this.control.confirmEnd(id),
      track: (s, ended) => {
        const t = { destroy: () => s.destroy(), once: (_ev: 'close', fn: () => void) => void ended.then(fn, fn) };
        this.track(t);
      },
    };
  }

  /** Connect + attach a stream socket: its data channel and what the gateway said about it. */
  private async openChannel(uri: string, opts: ConnectOptions, signal?: AbortSignal): Promise<{ inner: Duplex; meta: SocketMeta; confirmEof: boolean }> {
    const { offers, local } = this.offers(opts.transports);
    const options: SocketOption[] = [];
    if (opts.noDelay !== undefined) options.push({ option: { $case: 'noDelay', noDelay: opts.noDelay } });
    if (opts.keepAliveMs !== undefined) options.push({ option: { $case: 'keepAliveMs', keepAliveMs: opts.keepAliveMs } });
    const sig = opts.signal && signal ? AbortSignal.any([opts.signal, signal]) : (opts.signal ?? signal);
    const callOpts: CallOpts = { ...(sig ? { signal: sig } : {}), ...(opts.deadlineMs ? { deadlineMs: opts.deadlineMs } : {}) };
    const req = { uri, offers, timeoutMs: opts.timeoutMs ?? 0, options };
    return this.connectGate.run(() => this.connectAndAttach(uri, req, offers, local, callOpts), sig);
  }

  /** The Connect call and the attach of what it negotiated (one turn of the connect gate). */
  private async connectAndAttach(
    uri: string,
    req: { uri: string; offers: TransportOffer[]; timeoutMs: number; options: SocketOption[] },
    offers: TransportOffer[],
    local: FallbackInfo[],
    callOpts: CallOpts,
  ): Promise<{ inner: Duplex; meta: SocketMeta; confirmEof: boolean }> {
    const started = Date.now();
    trace(`connect ${uri}: offering ${offers.map((o) => transportNameOf(o.kind)).join(',')}`);
    // tcp first and the data port known: its data connection opens alongside the Connect (tcp-parallel.ts).
    let par = this.parallel.begin(req.offers, callOpts.signal);
    // A pre-issued shm slot named in the offer: the Connect answers with the socket linked to it (attach-shm.ts).
    const lease = this.attacher.lease(par.offers);
    const res = await this.unary(this.client.connect, { ...req, offers: lease.offers }, callOpts).catch((err: unknown) => {
      lease.settle(undefined, err);
      this.parallel.drop(par.early);
      par = { offers: req.offers };
      // A call started on a connection the gateway dropped a moment later (it died, or restarts) is
      // retried once on the next connection; a gateway that did get the first call reaps its socket
      // when the unused attach token expires.
      if (err instanceof GatewayUnavailableError && err.message === 'Connection dropped' && Date.now() - started < CONNECTION_DROPPED_RETRY_MS) {
        return this.unary(this.client.connect, req, callOpts);
      }
      throw err;
    });
    lease.settle(res.negotiation?.accepted);
    trace(`connect ${uri}: socket ${res.socketId}, gateway accepted ${res.negotiation?.accepted ? transportNameOf(res.negotiation.accepted.kind) : 'none'}`);
    return this.attachStream(res.socketId, res.localUri, res.remoteUri, res.negotiation, offers, local, callOpts, this.parallel.take(par.early, res.negotiation?.accepted));
  }

  /**
   * @internal For a gateway that opens host sockets through this one (its
   * `peers` rules, server/peers.ts); applications use connect().
   *
   * Connect + attach like connect(), but hands back the attached data channel
   * itself, as a `net.Socket` with a real descriptor, instead of a
   * GatewaySocket. Why: that gateway treats the result as a host socket, and
   * its native links (shm ring pumps, tcp splice relays) dup() the host
   * socket's descriptor and move the bytes on the native I/O thread; a
   * GatewaySocket is a JS Duplex with no descriptor. rdma's channel already is
   * a net.Socket over a socketpair end that the rdma connection pumps; tcp's is
   * the data connection itself. A channel without a descriptor (grpc, shm) is
   * bridged into a socketpair in JS (needs the native addon).
   *
   * The socket comes back paused, half-open allowed, possibly with bytes
   * already buffered (read() them first). What a descriptor cannot say (an
   * rdma slot or grpc stream that failed rather than ended) comes through
   * `failure`. The raw tcp plane cannot tell the gateway's FIN from its death:
   * an end of stream on it is not confirmed here (GatewaySocket confirms it
   * over the control plane; a descriptor handed to a native link cannot wait).
   */
  async openStream(uri: string, opts: ConnectOptions = {}): Promise<OpenedStream> {
    const { inner, meta } = await this.openChannel(uri, opts);
    const closeRemote = () => this.control.close(meta.socketId).catch(() => {});
    let socket: Socket;
    let failure: Promise<SockgateError | undefined>;
    if (inner instanceof Socket && typeof (inner as unknown as { _handle?: { fd?: number } })._handle?.fd === 'number') {
      socket = inner;
      // rdma says how each slot ended; the tcp plane's FIN says nothing more than the descriptor does.
      failure = inner instanceof RdmaSocket ? inner.ended : new Promise(() => {});
      // Live failover still applies once the caller moved the descriptor into a native link and let go of this object.
      if (inner instanceof RdmaSocket) inner.handedOver = true;
    } else {
      try {
        ({ socket, failure } = await bridgeToFd(inner, `socket ${meta.socketId} (${meta.transport})`));
      } catch (err) {
        inner.destroy();
        void closeRemote();
        throw err;
      }
    }
    socket.pause();
    const tracked = { destroy: () => void socket.destroy(), once: (ev: 'close', fn: () => void) => socket.once(ev, fn) };
    this.track(tracked);
    return {
      socket,
      socketId: meta.socketId,
      transport: meta.transport,
      fallbacks: meta.fallbacks,
      localUri: meta.localUri,
      remoteUri: meta.remoteUri,
      failure,
      dataConnection: () => dataConnectionInfo(socket),
      close: async () => {
        socket.destroy();
        await closeRemote();
      },
    };
  }

  /** Attach a stream socket's data plane; on failure the gateway-side socket is closed. */
  private async attachStream(
    socketId: string,
    localUri: string,
    remoteUri: string,
    negotiation: NegotiationResult | undefined,
    offers: TransportOffer[],
    local: FallbackInfo[],
    opts: CallOpts,
    early?: Promise<Duplex>,
  ): Promise<{ inner: Duplex; meta: SocketMeta; confirmEof: boolean }> {
    try {
      const { channel, accepted, fallbacks } = await this.attach(socketId, negotiation, offers, 'stream', opts, early);
      return {
        inner: channel,
        meta: { socketId, transport: transportNameOf(accepted.kind) as TransportName, fallbacks: [...local, ...fallbacks], localUri, remoteUri },
        confirmEof: accepted.kind === TransportKind.TRANSPORT_KIND_TCP,
      };
    } catch (err) {
      void this.control.close(socketId).catch(() => {});
      throw err;
    }
  }

  private track(s: { destroy(err?: Error): unknown; once(ev: 'close', fn: () => void): unknown }): void {
    this.open.add(s);
    s.once('close', () => this.open.delete(s));
  }

  /**
   * Attach the data plane: try the accepted transport; if that fails, ask the
   * gateway for the next of our offers, telling it why: the attach error's own
   * reason when it carries one (rdma: PEER_DECLINED, ROUTE_ERROR, ...), else
   * CONNECT_FAILED.
   */
  private async attach(
    socketId: string,
    negotiation: NegotiationResult | undefined,
    offers: TransportOffer[],
    mode: 'stream' | 'datagram',
    opts: CallOpts,
    /** The first round's channel, already being attached (a parallel open the gateway took). */
    early?: Promise<Duplex>,
  ): Promise<{ channel: Duplex; accepted: Accepted; fallbacks: FallbackInfo[] }> {
    let result = negotiation;
    for (let round = 0; round <= offers.length; round++) {
      const accepted = result?.accepted;
      if (!accepted) throw new NoTransportError(`gateway accepted none of the offered transports: ${(result?.fallbacks ?? []).map((f) => `${transportNameOf(f.kind)}: ${f.detail}`).join('; ')}`);
      try {
        // A parallel open that failed (refused before its token was issued, say) leaves the token unredeemed: attach with it as usual.
        const channel = await (round === 0 && early ? early.catch(() => this.attachWith(accepted, mode, opts, socketId)) : this.attachWith(accepted, mode, opts, socketId));
        return { channel, accepted, fallbacks: (result?.fallbacks ?? []).map(fallbackInfo) };
      } catch (err) {
        if (err instanceof AbortedError) throw err;
        const rest = offers.slice(offers.findIndex((o) => o.kind === accepted.kind) + 1);
        if (!rest.length) throw err;
        const own = (err as { declineReason?: unknown }).declineReason;
        const failedReason = typeof own === 'number' && own !== DeclineReason.DECLINE_REASON_UNSPECIFIED ? (own as DeclineReason) : DeclineReason.DECLINE_REASON_CONNECT_FAILED;
        const res = await this.unary(this.client.negotiate, { socketId, offers: rest, failedTransport: accepted.kind, failedReason, failedDetail: (err as Error).message }, opts);
        result = res.negotiation;
      }
    }
    throw new NoTransportError('negotiation did not converge');
  }

  /** The transport attach of one accepted offer (kept a method: tests wrap it). */
  private attachWith(accepted: Accepted, mode: 'stream' | 'datagram', opts: CallOpts, socketId = ''): Promise<Duplex> {
    return this.attacher.attach(accepted, mode, opts, socketId);
  }

  /** @internal The shm client, once the first shm offer created it (tests read its sessions). */
  get shmClient(): ShmClient | undefined {
    return this.attacher.shmClient;
  }

  /** Listen on a host address through the gateway; inbound connections arrive as 'connection' events. */
  async listen(uri: string, opts: ConnectOptions & { backlog?: number; channels?: boolean } = {}): Promise<GatewayServer> {
    const { offers, local } = this.offers(opts.transports);
    const res = await this.unary(this.client.listen, { uri, backlog: opts.backlog ?? 0 }, opts);
    const stream = this.client.accept({ listenerId: res.listenerId, offers }, this.metadata);
    let stopping = false;
    const server = new GatewayServer(res.listenerId, res.localUri, async () => {
      stopping = true;
      stream.cancel();
      await this.control.close(res.listenerId).catch(() => {});
    });
    stream.on('data', (ev: AcceptResponse) => {
      this.attachStream(ev.socketId, ev.localUri, ev.remoteUri, ev.negotiation, offers, local, {}).then(
        ({ inner, meta, confirmEof }) => {
          if (opts.channels) {
            // For links (link.ts): the attached channel itself, untouched by JS.
            server.emit('channel', this.linkable(inner, meta, confirmEof));
            return;
          }
          const sock = new GatewaySocket(this.control, undefined);
          this.track(sock);
          sock.attachInner(inner, meta, confirmEof);
          server.emit('connection', sock);
        },
        (err: unknown) => server.emit('error', err),
      );
    });
    stream.on('error', (err: ServiceError) => {
      if (stopping || err.code === status.CANCELLED) return;
      server.emit('error', fromServiceError(err));
    });
    stream.on('end', () => void server.close());
    this.track({ destroy: () => void server.close(), once: (ev, fn) => server.once(ev, fn) });
    process.nextTick(() => server.emit('listening'));
    return server;
  }

  /** A UDP socket through the gateway: bound to `uri` (default) or connected to it. */
  async udp(uri: string, opts: UdpOptions = {}): Promise<GatewayDatagramSocket> {
    // Datagrams ride neither shm nor rdma: leave them out of the default offers.
    const { offers, local } = this.offers(opts.transports ?? this.offersDefault.filter((t) => t !== 'shm' && t !== 'rdma'));
    let socketId: string;
    let localUri: string;
    let remoteUri = '';
    let negotiation: NegotiationResult | undefined;
    if (opts.mode === 'connect') {
      const res = await this.unary(this.client.connect, { uri, offers, timeoutMs: 0, options: [] }, opts);
      ({ socketId, localUri, remoteUri, negotiation } = res);
    } else {
      const res = await this.unary(this.client.bind, { uri, offers }, opts);
      ({ socketId, localUri, negotiation } = res);
    }
    try {
      const { channel, accepted, fallbacks } = await this.attach(socketId, negotiation, offers, 'datagram', opts);
      const sock = new GatewayDatagramSocket(
        channel,
        { socketId, transport: transportNameOf(accepted.kind), fallbacks: [...local, ...fallbacks], localUri, remoteUri, maxDatagramBytes: MAX_DATAGRAM_BYTES },
        this.control,
        MAX_DATAGRAM_BYTES,
      );
      this.track({ destroy: () => void sock.close(), once: (ev, fn) => sock.once(ev, fn) });
      return sock;
    } catch (err) {
      void this.control.close(socketId).catch(() => {});
      throw err;
    }
  }

  /** Half-close a socket on the gateway side (shutdown(2)). */
  shutdown(socketId: string, how: 'read' | 'write' | 'both', opts: CallOpts = {}): Promise<void> {
    return this.unary(this.client.shutdown, { socketId, how: how === 'read' ? ShutdownHow.SHUTDOWN_HOW_READ : how === 'write' ? ShutdownHow.SHUTDOWN_HOW_WRITE : ShutdownHow.SHUTDOWN_HOW_BOTH }, opts).then(() => {});
  }

  async getInfo(socketId: string, opts: CallOpts = {}): Promise<SocketInfo> {
    const res = await this.unary(this.client.getInfo, { socketId }, opts);
    if (!res.info) throw new SockgateError('gateway returned no socket info');
    return res.info;
  }

  /** The caller's own sockets; an admin identity's call lists every identity's (or `identity`'s). */
  async listSockets(identity = '', opts: CallOpts = {}): Promise<SocketInfo[]> {
    // The gateway answers in pages (each under the gRPC message limit): follow them, a bounded number of times.
    const all: SocketInfo[] = [];
    let pageToken = '';
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const res = await new Promise<ListSocketsResponse>((resolve, reject) => {
        this.adminClient.listSockets({ identity, pageSize: 0, pageToken }, this.metadata, { deadline: Date.now() + (opts.deadlineMs ?? this.deadlineMs) }, (err, r) =>
          err ? reject(fromServiceError(err)) : resolve(r),
        );
      });
      all.push(...res.sockets);
      pageToken = res.nextPageToken;
      if (pageToken === '' || res.sockets.length === 0) break;
    }
    return all;
  }

  /** Close the control channel; sockets opened through it are destroyed. */
  close(): void {
    for (const s of [...this.open]) s.destroy();
    this.open.clear();
    this.attacher.close();
    this.client.close();
    this.adminClient.close();
    this.vsock?.close();
  }
}

export { SocketState };
export type { CallOpts, ConnectOptions } from './call-options.js';
export { SDK_TRANSPORTS, defaultTransports, isLocalTarget, type GatewayOptions, type UdpOptions } from './gateway-options.js';
export { GatewayServer } from './gateway-server.js';
export type { LinkableSocket, OpenedStream } from './opened-socket.js';
