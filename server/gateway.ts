/**
 * The gateway daemon: assembles policy, host backend, socket table,
 * transports, telemetry and the gRPC services, and runs the lifecycle
 * (start; graceful stop = stop accepting, drain, then close).
 */
import { readFileSync } from 'node:fs';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { loadFileDescriptorSetFromBuffer } from '@grpc/proto-loader';
import { AdminServiceService, SocketGatewayServiceService } from '../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../proto/gen/sockgate/v1/transport.js';
import { AttachRegistry } from './attach.js';
import { splitListenAddress, type Config } from './config.js';
import { NativeError, ShuttingDownError, SocketClosedError } from '../proto/errors.js';
import { HostBackend, type HostLookup } from './host-backend.js';
import { HostSmc } from './host-smc.js';
import { PeerRouter, type PeerGatewayConnector } from './peers.js';
import { Negotiator } from './negotiate.js';
import { Policy } from './policy.js';
import { createServices } from './service.js';
import { ControlAdmission } from './control-admission.js';
import { ControlListeners } from './control-listeners.js';
import { VmmListeners, vsockUdsPath, type ServedVm } from './vmm-listeners.js';
import { VsockListeners } from './vsock-listeners.js';
import { PeerRegistry } from './control-peer.js';
import { addGuardedService } from './decode-guard.js';
import { CountBudget } from './count-budget.js';
import { LogLimiter } from './log-limiter.js';
import { IdentityByteBudgets } from './datagram-queue.js';
import { ListenerSocket, SocketTable, StreamSocket, type GatewaySocket } from './socket-table.js';
import { SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { createTelemetry, type Telemetry } from './telemetry.js';
import type { Logger } from '../native/log.js';
import type { Transport } from './transport.js';
import { TcpTransport } from './transport-tcp.js';
import { withFastDataCodec } from '../proto/wire.js';
import { widenGrpcWindows } from './grpc-windows.js';
import { GrpcTransport } from './transport-grpc.js';
import { PumpHub } from '../native/pump-hub.js';
import { ShmTransport } from './transport-shm.js';
import { RdmaTransport } from './transport-rdma.js';

/** The descriptor set `npm run gen` writes, for the reflection service. */
const DESCRIPTOR_SET = new URL('../../proto/gen/sockgate.binpb', import.meta.url);
const HEALTH_SERVICE_NAMES = ['', 'sockgate.v1.SocketGatewayService', 'sockgate.v1.AdminService'];
/** After a graceful drain, control calls are still answered this long (end-of-stream confirmations). */
const END_CONFIRM_LINGER_MS = 1_000;
/** Largest gRPC message accepted: a data frame plus headroom. */
const MAX_MESSAGE_BYTES = 4 << 20;

export interface GatewayOptions {
  /** Extra state for tests: a telemetry instance to use instead of creating one. */
  telemetry?: Telemetry;
  /** The host-name resolver (tests: two gateways that resolve a name differently); the system's by default. */
  lookup?: HostLookup;
  /** Opens SDK connections to peer gateways (config `peers`); required when peers are configured. The CLI passes the SDK's. */
  peerGateways?: PeerGatewayConnector;
}

export interface GatewayAddresses {
  /** gRPC target for clients, e.g. 127.0.0.1:7070 or unix:/run/sockgate.sock. */
  control: string;
  /** Host:port of the tcp data plane. */
  data: string;
  /** Prometheus URL, if enabled. */
  metrics: string | undefined;
  /** With `vsock_uds`: the Unix sockets VM guests reach the control and data planes through. */
  vsock?: { control: string; data: string };
  /** With `vsock`: the AF_VSOCK ports listened on. */
  vsockPorts?: { control: number; data: number };
}


export class Gateway {
  readonly telemetry: Telemetry;
  readonly logger: Logger;
  readonly table: SocketTable;
  readonly policy: Policy;
  /** Set once stop() began: no new sockets. */
  private shuttingDown = false;
  private readonly server: Server;
  private readonly health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICE_NAMES.map((n) => [n, 'NOT_SERVING'])));
  private readonly registry: AttachRegistry<GatewaySocket>;
  private readonly tcp: TcpTransport;
  /** The data-port host clients are told (TcpAttach.host, RdmaAttach.resume_host). */
  private readonly tcpAdvertiseHost: string;
  private readonly grpc: GrpcTransport;
  private readonly transports: Map<TransportKind, Transport>;
  /** `peers` routes: host sockets opened through peer gateways (their SDK connections are closed at stop). */
  private readonly peers: PeerRouter;
  private stopping: Promise<void> | undefined;
  private addressesValue: GatewayAddresses | undefined;
  /** Control connections by the peer string their calls report: their peer credentials (control-peer.ts). */
  readonly controlPeers = new PeerRegistry();
  /** Bounds on control connections (control-admission.ts). */
  readonly controlAdmission: ControlAdmission;
  /** The control listeners, created in start() once the native addon (SO_PEERCRED) is known. */
  private controlListeners: ControlListeners | undefined;
  /** `vsock_uds`: the VMs served through their VMMs' Unix sockets. */
  private vmm: VmmListeners | undefined;
  /** `vsock`: native AF_VSOCK control and data listeners (vhost-vsock guests). */
  private vsockListeners: VsockListeners | undefined;
  /** Kernel SMC host sockets and data port (server/host-smc.ts). */
  private readonly smc: HostSmc;

  constructor(
    readonly config: Config,
    options: GatewayOptions = {},
  ) {
    this.telemetry =
      options.telemetry ?? createTelemetry({ logLevel: config.telemetry.log_level, traces: config.telemetry.traces, metricsListen: config.listen.metrics });
    this.logger = this.telemetry.logger;
    this.policy = new Policy(config);
    if (config.anonymous.enabled && config.anonymous.admin) {
      this.logger.warn('anonymous.admin is true: callers without credentials may list and close every identity\'s sockets');
    }
        this.table = new SocketTable(config.limits.max_sockets, config.limits.max_fallbacks_per_socket);
    this.registry = new AttachRegistry<GatewaySocket>(config.transports.attach_token_ttl_ms, (s) => s.acceptsAttach());
    this.table.onRemoved((s) => {
      this.registry.revoke(s);
      for (const t of this.transports.values()) t.socketRemoved?.(s);
    });
    const metrics = this.telemetry.metrics;
    const hwm = config.socket.high_watermark_bytes;
    const lim = config.limits;
    // One limiter for every refusal an untrusted peer can cause at will (one line per interval and key).
    const refusalLog = new LogLimiter(this.logger, lim.refusal_log_interval_ms);
    const data = splitListenAddress(config.listen.data);
    if ('path' in data) throw new Error('listen.data must be host:port');
    this.smc = new HostSmc(config.smc, this.logger, this.telemetry.meter);
    this.tcpAdvertiseHost = config.transports.data_host ?? (data.host === '0.0.0.0' || data.host === '::' ? '127.0.0.1' : data.host);
    this.tcp = new TcpTransport({
      host: data.host,
      port: data.port,
      advertiseHost: this.tcpAdvertiseHost,
      highWatermark: hwm,
      maxDatagramBytes: config.socket.max_datagram_bytes,
      registry: this.registry,
      metrics,
      logger: this.logger,
      preambleTimeoutMs: lim.data_preamble_timeout_ms,
      parallelOpenWaitMs: lim.data_parallel_open_wait_ms,
      maxUnauthenticated: lim.max_unauthenticated_data_connections,
      maxUnauthenticatedPerPeer: lim.max_unauthenticated_data_connections_per_peer,
      refusalLog,
      ...(config.smc.data_port ? { smc: this.smc } : {}),
      // VM guests are told the vsock data port; their listeners are vmm-listeners.ts's and vsock-listeners.ts's.
      ...(config.vsock_uds || config.vsock ? { vsockPort: (config.vsock_uds ?? config.vsock)!.data_port } : {}),
    });
    this.grpc = new GrpcTransport({ highWatermark: hwm, registry: this.registry, metrics });
    this.peers = new PeerRouter(config.peers, this.logger, options.peerGateways, config.smc.peer_dial);
    this.transports = new Map<TransportKind, Transport>([
      [TransportKind.TRANSPORT_KIND_TCP, this.tcp],
      [TransportKind.TRANSPORT_KIND_GRPC, this.grpc],
    ]);
    const negotiator = new Negotiator(this.transports, new Set(config.transports.enabled), this.policy, this.registry, metrics, (kind) =>
      kind === TransportKind.TRANSPORT_KIND_SHM ? this.shmUnavailable : kind === TransportKind.TRANSPORT_KIND_RDMA ? this.rdmaUnavailable : undefined,
    );
    const services = createServices({
      policy: this.policy,
      backend: new HostBackend(this.policy, hwm, this.peers, options.lookup, this.smc),
      table: this.table,
      negotiator,
      registry: this.registry,
      grpcTransport: this.grpc,
      telemetry: this.telemetry,
      logger: this.logger,
      limits: {
        highWatermark: hwm,
        maxDatagramBytes: config.socket.max_datagram_bytes,
        udpIdleTimeoutMs: config.socket.udp_idle_timeout_ms,
        udpQueueBytes: lim.udp_queue_bytes,
        udpQueueDatagrams: lim.udp_queue_datagrams,
        maxRecvSubscribers: lim.max_recv_subscribers,
        udpQueueBudgets: new IdentityByteBudgets(lim.udp_queue_bytes_per_identity, lim.udp_queue_bytes_total),
        onDrop: (reason) => metrics.countDatagramDrop(reason),
      },
      bounds: {
        maxNegotiateRounds: lim.max_negotiate_rounds,
        maxPendingAttachMs: lim.max_pending_attach_ms,
        listSocketsPageSize: lim.list_sockets_page_size,
        maxConfirmBatch: lim.max_confirm_batch,
        pending: new CountBudget({
          what: 'sockets waiting for their data channel',
          maxTotal: lim.max_pending_sockets,
          maxPerIdentity: lim.max_pending_sockets_per_identity,
          totalKey: 'limits.max_pending_sockets',
          perIdentityKey: 'limits.max_pending_sockets_per_identity',
        }),
        listenBacklog: new CountBudget({
          what: 'listen backlog slots',
          maxTotal: Number.MAX_SAFE_INTEGER,
          maxPerIdentity: lim.max_listen_backlog_per_identity,
          totalKey: '(none)',
          perIdentityKey: 'limits.max_listen_backlog_per_identity',
        }),
        refusalLog,
      },
      connectTimeoutMs: config.socket.connect_timeout_ms,
      attachTtlMs: config.transports.attach_token_ttl_ms,
      isShuttingDown: () => this.shuttingDown,
      setTcpBuffer: (sock, which, bytes) => {
        const native = this.native;
        const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
        if (!native) throw new NativeError(`TCP buffer sizes need the native addon, which did not load: ${this.nativeError}`);
        if (typeof fd !== 'number' || fd < 0) throw new SocketClosedError('the host socket has no descriptor (closed)');
        native.setsockopt(fd, which === 'send' ? 'SO_SNDBUF' : 'SO_RCVBUF', bytes);
      },
      peers: this.controlPeers,
    });
    const limits = config.limits;
    this.controlAdmission = new ControlAdmission(
      {
        maxConnections: limits.max_control_connections,
        maxConnectionsPerPeer: limits.max_control_connections_per_peer,
        firstCallTimeoutMs: limits.control_first_call_timeout_ms,
      },
      this.logger,
    );
    this.server = new Server({
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc-node.max_session_memory': 64,
      'grpc.max_concurrent_streams': limits.max_control_streams_per_connection,
      // grpc-js closes (GOAWAY) a connection with no call in flight this long; absent = never.
      ...(limits.control_idle_timeout_ms > 0 ? { 'grpc.max_connection_idle_ms': limits.control_idle_timeout_ms } : {}),
    });
    if (!widenGrpcWindows(this.server)) this.logger.warn('grpc-js exposes no HTTP/2 settings: the grpc data plane keeps the 64 KiB default windows');
    addGuardedService(this.server, withFastDataCodec(SocketGatewayServiceService), services.socket);
    addGuardedService(this.server, AdminServiceService, services.admin);
    this.health.addToServer(this.server);
    new ReflectionService(loadFileDescriptorSetFromBuffer(readFileSync(DESCRIPTOR_SET))).addToServer(this.server);
    metrics.observeBytes(() => this.table.byteTotals());
    metrics.observeOpenSockets(() => this.table.openCounts());
  }

  /** The VMs served through `vsock_uds` now (configured and watched). */
  get vms(): ServedVm[] {
    return this.vmm?.list() ?? [];
  }

  /** Connections the native AF_VSOCK listeners accepted, per port (`vsock`; tests, status). */
  get vsockAccepted(): { control: number; data: number } {
    return { ...(this.vsockListeners?.accepted ?? { control: 0, data: 0 }) };
  }

  /** Resolves once the watched VM directory's changes so far are applied (tests). */
  async vmsSettled(): Promise<void> {
    await this.vmm?.settled();
  }

  get addresses(): GatewayAddresses {
    if (!this.addressesValue) throw new Error('gateway not started');
    return this.addressesValue;
  }

  private credentials(): ServerCredentials {
    const tls = this.config.tls;
    if (!tls) return ServerCredentials.createInsecure();
    return ServerCredentials.createSsl(
      tls.ca ? readFileSync(tls.ca) : null,
      [{ private_key: readFileSync(tls.key), cert_chain: readFileSync(tls.cert) }],
      tls.require_client_cert,
    );
  }

  /** The native addon, once start() loaded it; undefined if it could not be loaded (tcp and grpc still work). */
  private native: typeof import('../native/index.js') | undefined;
  /** Why the native addon did not load, for errors and logs. */
  private nativeError = '';
  /**
   * The one native pump (epoll I/O thread) every native link shares, with the
   * router of its events; created in start() once the addon loaded, closed
   * last in stop()/destroy().
   */
  private pumpHub: PumpHub | undefined;
  /** The shm data plane, when the addon loaded, shm is enabled and its listener started. */
  private shm: ShmTransport | undefined;
  /** Why shm is not in the transports map (decline detail). */
  private shmUnavailable = 'the native addon has not been loaded';
  /**
   * The rdma data plane, when the addon loaded and rdma is enabled. It is in the
   * transports map even when it does not listen (no address, no device): its
   * declines (NO_RDMA_DEVICE) say why.
   */
  private rdma: RdmaTransport | undefined;
  /** Why rdma is not in the transports map (decline detail). */
  private rdmaUnavailable = 'the native addon has not been loaded';

  async start(): Promise<GatewayAddresses> {
    try {
      this.native = await import('../native/index.js');
    } catch (err) {
      this.nativeError = (err as Error).message;
      this.logger.warn({ err: this.nativeError }, 'native addon not loaded: shm and rdma are unavailable');
    }
    const control = this.config.listen.control;
    const native = this.native;
    const listeners = new ControlListeners({
      grpc: this.server,
      credentials: this.credentials(),
      tls: this.config.tls !== undefined,
      admission: this.controlAdmission,
      registry: this.controlPeers,
      peerCred: native ? (fd) => native.peerCred(fd) : undefined,
      logger: this.logger,
    });
    this.controlListeners = listeners;
    const bound = await listeners.listen(control, 'control');
    await this.smc.start();
    if (this.config.smc.data_port && !this.smc.available) throw new Error(`config smc.data_port: kernel SMC is unavailable: ${this.smc.reason}`);
    // A preference, like a rule's `smc: prefer`: the peer data connections open as plain TCP.
    if (this.config.smc.peer_dial === 'prefer' && !this.smc.available) this.logger.warn({ reason: this.smc.reason }, 'config smc.peer_dial: kernel SMC is unavailable: peer data connections are plain TCP');
    if (this.native && this.config.transports.enabled.includes('shm')) await this.startShm(this.native);
    else if (!this.native) this.shmUnavailable = `the native addon did not load (${this.nativeError})`;
    if (this.native && this.config.transports.enabled.includes('rdma')) await this.startRdma(this.native);
    else if (!this.native) this.rdmaUnavailable = `the native addon did not load (${this.nativeError})`;
    if (this.native && this.config.transports.tcp_native) this.startTcpNative(this.native);
    for (const t of this.transports.values()) {
      if (t !== this.shm && t !== this.rdma) await t.start();
    }
    const vsock = this.config.vsock_uds;
    if (vsock) {
      this.vmm = new VmmListeners({ config: vsock, control: listeners, tcp: this.tcp, identityOf: (p) => this.policy.vmIdentityName({ vmmPath: p }), logger: this.logger });
      await this.vmm.start();
    }
    const vsockPorts = this.config.vsock ? this.startVsock(listeners) : undefined;
    await this.telemetry.start();
    const c = splitListenAddress(control);
    const controlTarget = 'path' in c ? control : `${c.host.includes(':') ? `[${c.host}]` : c.host}:${bound}`;
    this.addressesValue = { control: controlTarget, data: `127.0.0.1:${this.tcp.port}`, metrics: this.telemetry.metricsUrl };
    const d = splitListenAddress(this.config.listen.data);
    if (!('path' in d)) this.addressesValue.data = `${d.host.includes(':') ? `[${d.host}]` : d.host}:${this.tcp.port}`;
    const first = vsock?.path ?? vsock?.vms[0]?.path;
    if (vsockPorts) this.addressesValue.vsockPorts = vsockPorts;
    if (vsock && first) this.addressesValue.vsock = { control: vsockUdsPath(first, vsock.control_port), data: vsockUdsPath(first, vsock.data_port) };
    // Guests never reach the gateway through itself: policy learns the ports it really bound.
    const metricsUrl = this.telemetry.metricsUrl ? new URL(this.telemetry.metricsUrl) : undefined;
    this.policy.setGatewayEndpoints([
      ...('path' in c ? [] : [{ name: 'control', host: c.host, port: bound }]),
      ...('path' in d ? [] : [{ name: 'data', host: d.host, port: this.tcp.port }]),
      ...(metricsUrl ? [{ name: 'metrics', host: metricsUrl.hostname.replace(/^\[|\]$/g, ''), port: Number(metricsUrl.port) }] : []),
      ...(this.rdma && this.config.transports.rdma.address ? [{ name: 'rdma', host: this.config.transports.rdma.address, port: this.rdma.port }] : []),
    ]);
    for (const n of HEALTH_SERVICE_NAMES) this.health.setStatus(n, 'SERVING');
    // The ready line is logged at any level but silent: operators and harnesses read the bound ports from it.
    const ready = this.logger.level === 'silent' ? this.logger : this.logger.child({}, { level: 'info' });
    ready.info({ control: controlTarget, data: this.addressesValue.data, metrics: this.addressesValue.metrics, transports: this.config.transports.enabled }, 'sockgate gateway serving');
    return this.addressesValue;
  }

  /** Native AF_VSOCK listeners (`vsock`); configured but impossible (no addon, no AF_VSOCK) is an error. */
  private startVsock(control: ControlListeners): { control: number; data: number } {
    const native = this.native;
    if (!native) throw new NativeError(`vsock: AF_VSOCK listeners need the native addon, which did not load: ${this.nativeError}`);
    this.vsockListeners = new VsockListeners({
      config: this.config.vsock!,
      native,
      pump: this.hub(native).pump,
      control,
      tcp: this.tcp,
      identityOf: (cid) => this.policy.vmIdentityName({ cid }),
      logger: this.logger,
    });
    return this.vsockListeners.start();
  }

  /** The shared pump, created on first use; it keeps the process alive only while it has links. */
  private hub(native: typeof import('../native/index.js')): PumpHub {
    const hub =
      this.pumpHub ??
      new PumpHub(native, { spinUs: this.config.transports.shm.spin_us, shrinkIdleMs: this.config.transports.shm.shrink_idle_ms, unrefWhenIdle: true }, (err, event) =>
        this.logger.error({ err, event: event.type }, 'native pump event handler failed'),
      );
    this.pumpHub = hub;
    return hub;
  }

  /** The tcp plane relays stream sockets on the shared pump (splice links); if that fails, JS relays them. */
  private startTcpNative(native: typeof import('../native/index.js')): void {
    try {
      this.tcp.useNativeRelay({ native, pump: this.hub(native).pump });
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'tcp plane: native relay unavailable, relaying in JS');
    }
  }

  /** Start the shm plane on the shared pump; without it (logged) the gateway serves the other planes. */
  private async startShm(native: typeof import('../native/index.js')): Promise<void> {
    const cfg = this.config.transports.shm;
    try {
      const shm = new ShmTransport({
        config: cfg,
        tokenTtlMs: this.config.transports.attach_token_ttl_ms,
        native,
        hub: this.hub(native),
        registry: this.registry,
        policy: this.policy,
        metrics: this.telemetry.metrics,
        meter: this.telemetry.meter,
        logger: this.logger,
      });
      await shm.start();
      this.shm = shm;
      this.transports.set(TransportKind.TRANSPORT_KIND_SHM, shm);
    } catch (err) {
      this.shmUnavailable = `shm did not start: ${(err as Error).message}`;
      this.logger.error({ err: (err as Error).message }, 'shm data plane unavailable');
    }
  }

  /**
   * Start the rdma plane. It listens only with transports.rdma.address set and
   * a device present; otherwise it stays in the map to decline with the reason.
   */
  private async startRdma(native: typeof import('../native/index.js')): Promise<void> {
    const rdma = new RdmaTransport({
      config: this.config.transports.rdma,
      tokenTtlMs: this.config.transports.attach_token_ttl_ms,
      native,
      hub: () => this.hub(native),
      dataPort: () => ({ host: this.tcpAdvertiseHost, port: this.tcp.port }),
      highWatermark: this.config.socket.high_watermark_bytes,
      registry: this.registry,
      metrics: this.telemetry.metrics,
      meter: this.telemetry.meter,
      logger: this.logger,
    });
    await rdma.start();
    if (rdma.resume.enabled) this.tcp.acceptResumes((sock, req) => rdma.resume.accept(sock, req));
    this.rdma = rdma;
    this.transports.set(TransportKind.TRANSPORT_KIND_RDMA, rdma);
  }

  /** Release the native side last: shm and rdma sessions and listeners, then the pump. */
  private async closeNative(): Promise<void> {
    const shm = this.shm;
    this.shm = undefined;
    this.transports.delete(TransportKind.TRANSPORT_KIND_SHM);
    const rdma = this.rdma;
    this.rdma = undefined;
    this.transports.delete(TransportKind.TRANSPORT_KIND_RDMA);
    await Promise.all([shm, rdma].map((t) => t?.shutdown?.()));
    try {
      this.pumpHub?.close();
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'native pump still busy at stop');
    }
  }

  /**
   * Graceful stop: refuse new sockets and attaches, close listeners and
   * never-attached sockets, let open sockets drain for up to the drain
   * timeout, then abort what is left. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.shuttingDown = true;
    for (const n of HEALTH_SERVICE_NAMES) this.health.setStatus(n, 'NOT_SERVING');
    this.logger.info({ open: this.table.size }, 'shutting down: draining');
    const hadSockets = this.table.size > 0;
    for (const t of this.transports.values()) await t.close();
    this.vsockListeners?.stopAccepting();
    for (const s of this.table.list()) {
      if (s instanceof ListenerSocket || (s instanceof StreamSocket && s.state === SocketState.SOCKET_STATE_PENDING_ATTACH)) {
        void s.destroy(new ShuttingDownError());
      }
    }
    const drained = await this.table.drain(this.config.shutdown.drain_timeout_ms);
    if (!drained) {
      this.logger.warn({ open: this.table.size }, 'drain timeout: aborting the remaining sockets');
      await this.table.destroyAll(new ShuttingDownError('gateway stopped before the socket drained'));
    }
    // Clients confirm a clean end of stream over the control plane (the tcp plane's FIN
    // looks the same as a crash): keep answering them a moment after the last socket ended.
    if (hadSockets && drained) await new Promise((r) => setTimeout(r, END_CONFIRM_LINGER_MS));
    await this.peers.close();
    this.registry.close();
    // Bridged AF_VSOCK connections are links on the pump: they end before it closes.
    await this.vsockListeners?.close();
    await this.closeNative();
    this.vmm?.close();
    this.controlListeners?.stopAccepting();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2_000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.controlListeners?.close();
    await this.telemetry.shutdown();
    this.logger.info('sockgate gateway stopped');
  }

  /** Abort everything at once (tests, fatal errors). */
  async destroy(): Promise<void> {
    this.shuttingDown = true;
    await this.table.destroyAll(new ShuttingDownError());
    this.server.forceShutdown();
    await this.vsockListeners?.close();
    this.vmm?.close();
    this.controlListeners?.close();
    await this.peers.close();
    for (const t of this.transports.values()) await t.close();
    this.registry.close();
    await this.closeNative();
    await this.telemetry.shutdown();
  }
}
