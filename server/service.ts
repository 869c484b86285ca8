/**
 * The control-plane service edge: gRPC handlers for SocketGatewayService and
 * AdminService. Each call is identified, traced and measured here; errors
 * become gRPC statuses through the one table in proto/errors.ts.
 */
import type {
  handleServerStreamingCall,
  handleUnaryCall,
  Metadata,
  sendUnaryData,
  ServerUnaryCall,
  ServerWritableStream,
  ServerDuplexStream,
} from '@grpc/grpc-js';
import type { Span } from '@opentelemetry/api';
import type { Socket as NetSocket } from 'node:net';
import type {
  AcceptRequest,
  AcceptResponse,
  AdminServiceServer,
  DataRequest,
  DataResponse,
  RecvFromRequest,
  RecvFromResponse,
  SocketGatewayServiceServer,
} from '../proto/gen/sockgate/v1/sockgate.js';
import { ShutdownHow, SocketState } from '../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, type Fallback } from '../proto/gen/sockgate/v1/transport.js';
import {
  AttachFailedError,
  InvalidArgumentError,
  LimitExceededError,
  NoTransportError,
  PolicyDeniedError,
  ShuttingDownError,
  SockgateError,
  WrongSocketKindError,
  toStatus,
} from '../proto/errors.js';
import type { HostBackend } from './host-backend.js';
import type { Negotiator, Decision } from './negotiate.js';
import type { CallerCredentials, Identity, Policy } from './policy.js';
import { vmCredentialsOf, type PeerRegistry } from './control-peer.js';
import {
  DatagramSocket,
  ListenerSocket,
  StreamSocket,
  reasonName,
  transportName,
  type GatewaySocket,
  type SocketLimits,
  type SocketTable,
} from './socket-table.js';
import { ATTR, type ConnectResult, type Telemetry } from './telemetry.js';
import type { GrpcTransport } from './transport-grpc.js';
import type { AttachRegistry } from './attach.js';
import type { Logger } from '../native/log.js';
import { formatUri } from '../proto/uri.js';
import type { CountBudget } from './count-budget.js';
import type { LogLimiter } from './log-limiter.js';
import { listSocketsPage } from './list-sockets.js';
import { applyOption } from './socket-option.js';
import { confirmEnds } from './confirm-ends.js';

export interface ServiceDeps {
  policy: Policy;
  backend: HostBackend;
  table: SocketTable;
  negotiator: Negotiator;
  registry: AttachRegistry<GatewaySocket>;
  grpcTransport: GrpcTransport;
  telemetry: Telemetry;
  logger: Logger;
  limits: SocketLimits;
  connectTimeoutMs: number;
  /** How long a listener may wait for its Accept stream. */
  attachTtlMs: number;
  /** True once shutdown began: no new sockets. */
  isShuttingDown(): boolean;
  /** Per-socket and per-identity bounds (config `limits`). */
  bounds: ServiceBounds;
  /** Apply a buffer-size option to a TCP host socket (native setsockopt); undefined if unavailable. */
  setTcpBuffer?: (sock: NetSocket, which: 'send' | 'recv', bytes: number) => void;
  /** The control connections the gateway accepted, by the peer string their calls report (control-peer.ts). */
  peers?: PeerLookup;
}

/** The part of the PeerRegistry the service uses. */
export type PeerLookup = Pick<PeerRegistry, 'lookup'>;

export interface ServiceBounds {
  /** limits.max_negotiate_rounds */
  maxNegotiateRounds: number;
  /** limits.max_pending_attach_ms: a stream socket's tokens never outlive its creation by more. */
  maxPendingAttachMs: number;
  /** limits.max_confirm_batch */
  maxConfirmBatch: number;
  /** limits.list_sockets_page_size */
  listSocketsPageSize: number;
  /** Stream sockets in PENDING_ATTACH (limits.max_pending_sockets*). */
  pending: CountBudget;
  /** Sum of listen backlogs (limits.max_listen_backlog_per_identity). */
  listenBacklog: CountBudget;
  /** Refusals an untrusted peer can cause at will are logged through this. */
  refusalLog: LogLimiter;
}

const SERVICE = 'sockgate.v1.SocketGatewayService';
/** Listen backlog when the guest gives none, and the most it may ask for. */
const DEFAULT_BACKLOG = 128;
const MAX_BACKLOG = 4096;
/** Upper bound on a client-requested connect timeout. */
const MAX_CONNECT_TIMEOUT_MS = 120_000;

/** What a call exposes about itself: its metadata, the peer string of its connection, its TLS state. */
interface CallLike {
  metadata: Metadata;
  getPeer(): string;
  getAuthContext?: () => { sslPeerCertificate?: { subject?: { CN?: string | string[] } } };
}

/**
 * The credentials a call presents: its bearer token, its verified client
 * certificate's CN ('' for a certificate without one, which maps to no
 * identity) and, through the connection it came on (control-peer.ts), the
 * SO_PEERCRED uid of a same-host peer on the Unix control socket.
 */
function credentialsOf(call: CallLike, peers: PeerLookup | undefined): CallerCredentials {
  const creds: CallerCredentials = {};
  const auth = call.metadata.get('authorization')[0];
  if (typeof auth === 'string') creds.authorization = auth;
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  if (cert) {
    const cn = cert.subject?.CN;
    creds.tlsCommonName = typeof cn === 'string' ? cn : Array.isArray(cn) && typeof cn[0] === 'string' ? cn[0] : '';
  }
  const peer = peers?.lookup(call.getPeer())?.credentials;
  if (peer?.kind === 'unix') creds.peerUid = peer.uid;
  return Object.assign(creds, vmCredentialsOf(peer));
}

function connectResultOf(err: unknown): ConnectResult {
  const code = err instanceof SockgateError ? err.code : '';
  switch (code) {
    case 'ERR_SOCKGATE_CONNECT_REFUSED':
      return 'refused';
    case 'ERR_SOCKGATE_HOST_UNREACHABLE':
      return 'unreachable';
    case 'ERR_SOCKGATE_CONNECT_TIMEOUT':
      return 'timeout';
    case 'ERR_SOCKGATE_DNS':
      return 'dns';
    case 'ERR_SOCKGATE_POLICY_DENIED':
      return 'denied';
    case 'ERR_SOCKGATE_INVALID_URI':
    case 'ERR_SOCKGATE_INVALID_ARGUMENT':
      return 'invalid';
    case 'ERR_SOCKGATE_LIMIT_EXCEEDED':
      return 'limit';
    default:
      return 'error';
  }
}

function describeFallbacks(fallbacks: readonly Fallback[]): string {
  return fallbacks.map((f) => `${transportName(f.kind)}: ${reasonName(f.reason)} (${f.detail})`).join('; ');
}

function requireId(id: unknown, what = 'socket_id'): string {
  if (typeof id !== 'string' || id.length === 0) throw new InvalidArgumentError(`${what} is required`);
  return id;
}

export function createServices(deps: ServiceDeps): { socket: SocketGatewayServiceServer; admin: AdminServiceServer } {
  const { policy, backend, table, negotiator, telemetry, logger } = deps;
  const metrics = telemetry.metrics;

  /** Identify a call; its connection then counts as having made an identified call (control-admission.ts). */
  function identify(call: CallLike): Identity {
    const identity = policy.identify(credentialsOf(call, deps.peers));
    deps.peers?.lookup(call.getPeer())?.onIdentified?.();
    return identity;
  }

  /** Identify, trace and time a unary call; map errors to statuses. */
  function unary<Req, Res>(method: string, body: (req: Req, identity: Identity, span: Span, call: ServerUnaryCall<Req, Res>) => Promise<Res>): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = performance.now();
      const attrs = { [ATTR.RPC_SYSTEM]: 'grpc', [ATTR.RPC_SERVICE]: SERVICE, [ATTR.RPC_METHOD]: method };
      telemetry
        .withSpan(`${SERVICE}/${method}`, attrs, async (span) => {
          const identity = identify(call);
          span.setAttribute(ATTR.IDENTITY, identity.name);
          return body(call.request, identity, span, call);
        })
        .then(
          (res) => {
            metrics.recordRpc(method, 'OK', performance.now() - started);
            callback(null, res);
          },
          (err: unknown) => {
            const st = toStatus(err);
            metrics.recordRpc(method, String(st.code), performance.now() - started);
            if (!(err instanceof SockgateError)) logger.error({ err, method }, 'unexpected error in control call');
            callback(st);
          },
        );
    };
  }

  function guardNew(): void {
    if (deps.isShuttingDown()) throw new ShuttingDownError('gateway is shutting down: no new sockets');
  }

  /** Reap a stream socket that was never attached. */
  function onAttachExpired(sock: GatewaySocket): () => void {
    return () => {
      if (sock instanceof StreamSocket && sock.state === SocketState.SOCKET_STATE_PENDING_ATTACH) {
        metrics.recordAttach(transportName(sock.transport), 'expired');
        void sock.destroy(new AttachFailedError(`socket ${sock.id} was not attached before its token expired`));
      }
    };
  }

  /**
   * Count `identity`'s new stream socket as pending until it leaves PENDING_ATTACH
   * (throws LimitExceededError over the bound), and abort it if it is still
   * pending maxPendingAttachMs after its creation, token or not (a failed
   * Negotiate leaves a socket without one).
   */
  function takePending(identity: Identity): (sock: StreamSocket | undefined) => void {
    deps.bounds.pending.take(identity.name);
    return (sock) => {
      if (!sock || sock.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) return deps.bounds.pending.give(identity.name);
      const reaper = setTimeout(() => {
        if (sock.state !== SocketState.SOCKET_STATE_PENDING_ATTACH) return;
        metrics.recordAttach(transportName(sock.transport), 'expired');
        void sock.destroy(new AttachFailedError(`socket ${sock.id} had no data channel within ${deps.bounds.maxPendingAttachMs} ms of its creation (limits.max_pending_attach_ms)`));
      }, Math.max(0, sock.createdAtMs + deps.bounds.maxPendingAttachMs - Date.now()));
      reaper.unref();
      const left = (to: SocketState) => {
        if (to === SocketState.SOCKET_STATE_PENDING_ATTACH) return;
        clearTimeout(reaper);
        sock.off('transition', left);
        deps.bounds.pending.give(identity.name);
      };
      sock.on('transition', left);
    };
  }

  /** Latest expiry of a token for `sock`: a stream socket waits for its channel at most maxPendingAttachMs from creation. */
  function notAfter(sock: GatewaySocket): number | undefined {
    return sock instanceof StreamSocket ? sock.createdAtMs + deps.bounds.maxPendingAttachMs : undefined;
  }

  function noteNegotiation(span: Span, decision: Decision): void {
    if (decision.accepted) span.setAttribute(ATTR.TRANSPORT, transportName(decision.accepted.kind));
    if (decision.fallbacks[0]) span.setAttribute(ATTR.FALLBACK_REASON, reasonName(decision.fallbacks[0].reason));
  }

  const socket: SocketGatewayServiceServer = {
    connect: unary('Connect', async (req, identity, span, call) => {
      try {
        guardNew();
        const target = await backend.resolve(identity, req.uri, 'connect');
        span.setAttributes({
          [ATTR.NETWORK_TRANSPORT]: target.uri.protocol,
          [ATTR.NETWORK_TYPE]: target.family === 6 ? 'ipv6' : 'ipv4',
          [ATTR.SERVER_ADDRESS]: target.uri.host,
          [ATTR.SERVER_PORT]: target.uri.port,
          [ATTR.NETWORK_PEER_ADDRESS]: target.address,
          [ATTR.NETWORK_PEER_PORT]: target.uri.port,
        });
        const socketKind = target.uri.protocol === 'tcp' ? 'stream' : 'datagram';
        const decision = await negotiator.decide(req.offers, { identity, socketKind, peer: call.getPeer(), connect: true });
        noteNegotiation(span, decision);
        if (!decision.accepted) throw new NoTransportError(`no offered transport can be used: ${describeFallbacks(decision.fallbacks)}`);
        // Until the token is issued, a failure leaves what the transport reserved for nobody: give it back.
        const abandon = (err: unknown): never => {
          negotiator.abandon(decision);
          throw err;
        };
        try {
          table.reserve(identity);
        } catch (err) {
          abandon(err);
        }
        let pendingFor: ((sock: StreamSocket | undefined) => void) | undefined;
        let sock!: StreamSocket | DatagramSocket;
        try {
          const timeout = Math.min(req.timeoutMs || deps.connectTimeoutMs, MAX_CONNECT_TIMEOUT_MS);
          if (target.uri.protocol === 'tcp') {
            pendingFor = takePending(identity);
            const host = await backend.connectTcp(target, timeout, undefined, req.options);
            const stream = new StreamSocket(table.newId('stream'), identity, host);
            stream.hostSocket = () => backend.describeHostSocket(host);
            pendingFor(stream);
            pendingFor = undefined;
            const via = backend.peerStreamOf(host);
            if (via) {
              // Opened through a peer gateway (a `peers` route): the real host socket is the peer's.
              stream.peer = via.hop;
              stream.localUri = via.localUri;
              stream.remoteUri = via.remoteUri;
              // A failure its descriptor cannot show (an rdma slot or grpc stream torn down) ends the socket with its code.
              void via.failure.then((err) => err && void stream.destroy(err));
            }
            sock = stream;
          } else {
            const udp = await backend.openUdp(identity, undefined, target);
            sock = new DatagramSocket(table.newId('datagram'), identity, udp, true, deps.limits, (uri) => resolveUdpDestination(identity, uri));
          }
        } catch (err) {
          pendingFor?.(undefined);
          table.release(identity);
          abandon(err);
        }
        table.add(sock);
        try {
          for (const option of req.options) applyOption(sock, option, deps.setTcpBuffer);
        } catch (err) {
          void sock.destroy();
          abandon(err);
        }
        span.setAttribute(ATTR.SOCKET_ID, sock.id);
        metrics.recordConnect('ok', target.uri.protocol);
        const negotiation = negotiator.issue(sock, decision, onAttachExpired(sock), notAfter(sock));
        logger.debug({ socket: sock.id, identity: identity.name, remote: sock.remoteUri, transport: transportName(decision.accepted.kind), rule: target.rule }, 'connected');
        return { socketId: sock.id, localUri: sock.localUri, remoteUri: sock.remoteUri, negotiation };
      } catch (err) {
        if (!(err instanceof NoTransportError) && !(err instanceof ShuttingDownError)) {
          metrics.recordConnect(connectResultOf(err), String(req.uri ?? '').startsWith('udp') ? 'udp' : 'tcp');
        }
        throw err;
      }
    }),

    negotiate: unary('Negotiate', async (req, identity, span, call) => {
      const sock = table.get(requireId(req.socketId), identity, 'owner');
      if (!(sock instanceof StreamSocket || sock instanceof DatagramSocket) || (sock instanceof StreamSocket && sock.state !== SocketState.SOCKET_STATE_PENDING_ATTACH)) {
        throw new WrongSocketKindError(`socket ${sock.id} is not waiting for an attach`);
      }
      // Each round costs state and renews the token: bounded in count, and in time from the socket's creation.
      const rounds = ++sock.negotiateRounds;
      const expired = sock instanceof StreamSocket && Date.now() >= sock.createdAtMs + deps.bounds.maxPendingAttachMs;
      if (rounds > deps.bounds.maxNegotiateRounds || expired) {
        const err = new LimitExceededError(
          expired
            ? `socket ${sock.id} waited for its data channel longer than ${deps.bounds.maxPendingAttachMs} ms (limits.max_pending_attach_ms)`
            : `socket ${sock.id} has negotiated ${rounds - 1} times, the limit is ${deps.bounds.maxNegotiateRounds} (limits.max_negotiate_rounds)`,
        );
        if (sock instanceof StreamSocket) void sock.destroy(err);
        throw err;
      }
      deps.registry.revoke(sock);
      const prior = [...sock.fallbacks];
      if (req.failedTransport !== TransportKind.TRANSPORT_KIND_UNSPECIFIED) {
        const reason = req.failedReason || DeclineReason.DECLINE_REASON_CONNECT_FAILED;
        prior.push({ kind: req.failedTransport, reason, detail: String(req.failedDetail ?? '').slice(0, 256) || 'client could not attach' });
        metrics.recordFallback(transportName(req.failedTransport), reasonName(reason));
      }
      const decision = await negotiator.decide(req.offers, { identity, socketKind: sock.kind === 'stream' ? 'stream' : 'datagram', peer: call.getPeer() }, prior);
      noteNegotiation(span, decision);
      if (!decision.accepted) {
        sock.setFallbacks(decision.fallbacks);
        throw new NoTransportError(`no offered transport can be used: ${describeFallbacks(decision.fallbacks.slice(prior.length))}`);
      }
      return { negotiation: negotiator.issue(sock, decision, onAttachExpired(sock), notAfter(sock)) };
    }),

    listen: unary('Listen', async (req, identity, span) => {
      guardNew();
      const target = await backend.resolve(identity, req.uri, 'listen', 'tcp');
      span.setAttributes({ [ATTR.NETWORK_TRANSPORT]: 'tcp', [ATTR.SERVER_ADDRESS]: target.address, [ATTR.SERVER_PORT]: target.uri.port });
      const backlog = Math.min(req.backlog || DEFAULT_BACKLOG, MAX_BACKLOG);
      deps.bounds.listenBacklog.take(identity.name, backlog);
      try {
        table.reserve(identity);
      } catch (err) {
        deps.bounds.listenBacklog.give(identity.name, backlog);
        throw err;
      }
      let listener: ListenerSocket;
      try {
        const server = await backend.listenTcp(identity, target, backlog);
        const addr = server.address() as { address: string; port: number };
        listener = new ListenerSocket(table.newId('listener'), identity, server, formatUri('tcp', addr.address, addr.port), backlog);
        listener.hostSocket = () => backend.describeHostSocket(server);
      } catch (err) {
        table.release(identity);
        deps.bounds.listenBacklog.give(identity.name, backlog);
        throw err;
      }
      table.add(listener);
      void listener.closed.then(() => deps.bounds.listenBacklog.give(identity.name, backlog));
      // A listener nobody accepts from is closed, so a client that died cannot leak it.
      setTimeout(() => {
        if (!listener.hasAcceptor && !listener.isClosed) void listener.destroy(new AttachFailedError(`listener ${listener.id} had no Accept stream within ${deps.attachTtlMs} ms`));
      }, deps.attachTtlMs).unref();
      return { listenerId: listener.id, localUri: listener.localUri };
    }),

    accept: ((call: ServerWritableStream<AcceptRequest, AcceptResponse>) => {
      let identity: Identity;
      let listener: GatewaySocket;
      try {
        identity = identify(call);
        listener = table.get(requireId(call.request.listenerId, 'listener_id'), identity, 'owner');
        if (!(listener instanceof ListenerSocket)) throw new WrongSocketKindError(`${listener.id} is not a listener`);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      const l = listener as ListenerSocket;
      const offers = call.request.offers;
      const onInbound = async (host: NetSocket) => {
        let pendingFor: (sock: StreamSocket | undefined) => void;
        try {
          pendingFor = takePending(identity);
        } catch (err) {
          deps.bounds.refusalLog.warn(`inbound:${identity.name}`, { listener: l.id, identity: identity.name, err: (err as Error).message }, 'inbound connection refused by limit');
          host.destroy();
          return;
        }
        try {
          table.reserve(identity);
        } catch (err) {
          pendingFor(undefined);
          deps.bounds.refusalLog.warn(`inbound:${identity.name}`, { listener: l.id, identity: identity.name, err: (err as Error).message }, 'inbound connection refused by limit');
          host.destroy();
          return;
        }
        const sock = new StreamSocket(table.newId('stream'), identity, host);
        sock.hostSocket = () => backend.describeHostSocket(host);
        pendingFor(sock);
        table.add(sock);
        const decision = await negotiator.decide(offers, { identity, socketKind: 'stream', peer: call.getPeer() });
        if (!decision.accepted) {
          sock.setFallbacks(decision.fallbacks);
          void sock.destroy(new NoTransportError(describeFallbacks(decision.fallbacks)));
          return;
        }
        const negotiation = negotiator.issue(sock, decision, onAttachExpired(sock), notAfter(sock));
        call.write({ socketId: sock.id, localUri: sock.localUri, remoteUri: sock.remoteUri, negotiation });
      };
      let uninstall: () => void;
      try {
        uninstall = l.setAcceptor((host) => void onInbound(host));
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      const end = () => {
        uninstall();
        void l.close();
      };
      call.on('cancelled', end);
      call.on('close', end);
      void l.closed.then(() => {
        if (!call.writableEnded) {
          if (l.error) call.emit('error', toStatus(l.error));
          else call.end();
        }
      });
    }) as handleServerStreamingCall<AcceptRequest, AcceptResponse>,

    bind: unary('Bind', async (req, identity, span, call) => {
      guardNew();
      const target = await backend.resolve(identity, req.uri, 'bind', 'udp');
      span.setAttributes({ [ATTR.NETWORK_TRANSPORT]: 'udp', [ATTR.SERVER_ADDRESS]: target.address, [ATTR.SERVER_PORT]: target.uri.port });
      const decision: Decision = req.offers.length
        ? await negotiator.decide(req.offers, { identity, socketKind: 'datagram', peer: call.getPeer() })
        : { accepted: undefined, fallbacks: [] };
      if (req.offers.length && !decision.accepted) throw new NoTransportError(`no offered transport can be used: ${describeFallbacks(decision.fallbacks)}`);
      table.reserve(identity);
      let sock: DatagramSocket;
      try {
        const udp = await backend.openUdp(identity, target, undefined);
        sock = new DatagramSocket(table.newId('datagram'), identity, udp, false, deps.limits, (uri) => resolveUdpDestination(identity, uri));
      } catch (err) {
        table.release(identity);
        throw err;
      }
      table.add(sock);
      return { socketId: sock.id, localUri: sock.localUri, negotiation: negotiator.issue(sock, decision, () => {}) };
    }),

    sendTo: unary('SendTo', async (req, identity) => {
      const sock = table.get(requireId(req.socketId), identity, 'owner');
      if (!(sock instanceof DatagramSocket)) throw new WrongSocketKindError(`SendTo needs a datagram socket; ${sock.id} is a ${sock.kind}`);
      if (!req.datagram) throw new InvalidArgumentError('datagram is required');
      const n = await sock.send({ uri: req.datagram.uri ?? '', payload: Buffer.from(req.datagram.payload ?? []) });
      return { bytesSent: n };
    }),

    recvFrom: ((call: ServerWritableStream<RecvFromRequest, RecvFromResponse>) => {
      let sock: GatewaySocket;
      try {
        const identity = identify(call);
        sock = table.get(requireId(call.request.socketId), identity, 'owner');
        if (!(sock instanceof DatagramSocket)) throw new WrongSocketKindError(`RecvFrom needs a datagram socket; ${sock.id} is a ${sock.kind}`);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      const d = sock as DatagramSocket;
      let unsubscribe: () => void;
      try {
        // UDP semantics: a reader that falls behind loses datagrams; the socket's queue is bounded in bytes and count.
        unsubscribe = d.subscribe(call, (dg) => ({ datagram: { uri: dg.uri, payload: dg.payload } }));
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      call.on('cancelled', unsubscribe);
      call.on('close', unsubscribe);
      void d.closed.then(() => {
        unsubscribe();
        if (!call.writableEnded) call.end();
      });
    }) as handleServerStreamingCall<RecvFromRequest, RecvFromResponse>,

    shutdown: unary('Shutdown', async (req, identity) => {
      const sock = table.get(requireId(req.socketId), identity, 'owner');
      if (!(sock instanceof StreamSocket)) throw new WrongSocketKindError(`Shutdown needs a stream socket; ${sock.id} is a ${sock.kind}`);
      const how = req.how;
      if (how !== ShutdownHow.SHUTDOWN_HOW_READ && how !== ShutdownHow.SHUTDOWN_HOW_WRITE && how !== ShutdownHow.SHUTDOWN_HOW_BOTH) {
        throw new InvalidArgumentError('how must be READ, WRITE or BOTH');
      }
      sock.shutdown(how !== ShutdownHow.SHUTDOWN_HOW_WRITE, how !== ShutdownHow.SHUTDOWN_HOW_READ);
      return {};
    }),

    closeSocket: unary('CloseSocket', async (req, identity) => {
      const sock = table.get(requireId(req.socketId), identity, 'admin-close');
      await sock.close();
      return {};
    }),

    setOption: unary('SetOption', async (req, identity) => {
      const sock = table.get(requireId(req.socketId), identity, 'owner');
      applyOption(sock, req.option, deps.setTcpBuffer);
      return {};
    }),

    getInfo: unary('GetInfo', async (req, identity) => {
      return { info: table.info(requireId(req.socketId), identity) };
    }),

    confirmEnds: unary('ConfirmEnds', async (req, identity) => ({ states: await confirmEnds(table, identity, req.socketIds, deps.bounds.maxConfirmBatch) })),

    data: ((call: ServerDuplexStream<DataRequest, DataResponse>) => {
      let identity: Identity;
      try {
        identity = identify(call);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      // A token is the owner's to use: attaching is acting on the socket's data, so nobody else may, admin or not.
      deps.grpcTransport.handle(call, (target) =>
        target.identity.name === identity.name ? undefined : new AttachFailedError(`attach token rejected: socket belongs to another identity than "${identity.name}"`),
      );
    }) as SocketGatewayServiceServer['data'],
  };

  async function resolveUdpDestination(identity: Identity, uri: string): Promise<{ address: string; port: number }> {
    const t = await backend.resolve(identity, uri, 'connect', 'udp');
    return { address: t.address, port: t.uri.port };
  }

  const admin: AdminServiceServer = {
    listSockets: unary('ListSockets', async (req, identity) => {
      // Every identity lists its own sockets; an admin lists everyone's (or one identity's).
      const wanted = req.identity || undefined;
      if (!identity.admin && wanted !== undefined && wanted !== identity.name) {
        throw new PolicyDeniedError(`identity "${identity.name}" is not an admin: it may list only its own sockets`, { rule: 'admin' });
      }
      return listSocketsPage(table.list(identity.admin ? wanted : identity.name), req, deps.bounds.listSocketsPageSize);
    }),
  };

  return { socket, admin };
}
