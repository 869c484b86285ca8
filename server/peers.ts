/**
 * Peer gateway routes (config `peers`): a host stream socket whose destination
 * matches a route is opened through another sockgate gateway (`via`) with the
 * SDK instead of directly, so the peer opens the real host socket, on its
 * network and under its own policy. This gateway's policy has already decided
 * that the caller may reach the destination at all (HostBackend.resolve runs
 * first); the peer's policy then judges this gateway's identity (the route's
 * token). Names are sent as the caller wrote them: the peer resolves them again,
 * in its own network, and reports the address it dialled (remoteUri), which
 * HostBackend judges again with this gateway's rules, aborting the socket if
 * they deny it (answers that differ between the resolvers sidestep nothing).
 *
 * The result must look like a host socket to the rest of the gateway, with a
 * real descriptor, because native links (shm rings, tcp splice) dup() it:
 * Gateway#openStream hands back the SDK's data channel itself (rdma: a
 * socketpair end the rdma connection pumps; tcp: the data connection; grpc:
 * bridged into a socketpair). What a descriptor cannot carry, an rdma slot or
 * grpc stream that failed rather than ended, comes as `failure`, and the
 * gateway socket is destroyed with it. Errors of the peer (policy denied,
 * refused, unreachable, ...) reach the caller with the same codes; failures of
 * the hop itself (peer down, no transport) as HOST_UNREACHABLE.
 *
 * One SDK Gateway per peer (via, credentials), created on first use, closed
 * with the gateway.
 */
import { readFileSync } from 'node:fs';
import { isIP, type Socket as NetSocket } from 'node:net';
import ipaddr from 'ipaddr.js';
import { addressBytes, formatAddress, parseAddress } from './address.js';
import type { SocketOption } from '../proto/gen/sockgate/v1/sockgate.js';
import type { PeerHop } from '../proto/gen/sockgate/v1/sockgate.js';
import { DeclineReason, TransportKind, declineReasonFromJSON, type Fallback } from '../proto/gen/sockgate/v1/transport.js';
import type { PeerConfig } from './config.js';
import {
  AddressInUseError,
  ConnectRefusedError,
  ConnectTimeoutError,
  ConnectionResetError,
  DnsError,
  HostUnreachableError,
  InvalidArgumentError,
  InvalidUriError,
  LimitExceededError,
  PolicyDeniedError,
  SockgateError,
} from '../proto/errors.js';
import { transportKindOfName } from '../proto/transports.js';
import type { SocketUri } from '../proto/uri.js';
import type { Logger } from '../native/log.js';

/** What the router reads of a destination HostBackend resolved (its ResolvedTarget fits; declared here to keep the import one way). */
export interface PeerTarget {
  readonly uri: SocketUri;
  readonly address: string;
}

/** What the router uses of an SDK gateway connection; clients/sdk's Gateway fits (declared here: server/ does not import clients/). */
export interface PeerGatewayClient {
  openStream(uri: string, opts: PeerOpenOptions): Promise<PeerOpenedStream>;
  close(): void;
}

/** The subset of the SDK's ConnectOptions the router passes. */
export interface PeerOpenOptions {
  transports: readonly ('rdma' | 'tcp' | 'grpc')[];
  timeoutMs: number;
  deadlineMs: number;
  signal?: AbortSignal;
  noDelay?: boolean;
  keepAliveMs?: number;
}

/** The subset of the SDK's OpenedStream the router reads. */
export interface PeerOpenedStream {
  socket: NetSocket;
  socketId: string;
  transport: string;
  fallbacks: readonly { transport: string; reason: string; detail: string }[];
  localUri: string;
  remoteUri: string;
  failure: Promise<SockgateError | undefined>;
  /** How the kernel carries the tcp-plane data connection (the SDK's OpenedStream#dataConnection). */
  dataConnection?(): PeerDataConnection | undefined;
}

/** The SDK's DataConnectionInfo: the fields of HostSocket. */
export interface PeerDataConnection {
  proto: string;
  smcMode: string;
  smcFallbackReason: number;
  smcPeerDiagnosis: number;
  detail: string;
}

/** Opens an SDK gateway connection to a peer; injected by the composition root (the CLI passes the SDK's Gateway.connect). */
export type PeerGatewayConnector = (
  via: string,
  credentials: { token?: string; tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer } },
  /** `smc`: the SDK's GatewayOptions.smc (config smc.peer_dial). */
  opts: { deadlineMs: number; smc?: 'prefer' },
) => Promise<PeerGatewayClient>;

/** Time the peer's Connect may take beyond the host-side connect timeout (control round trips, attach). */
const CONTROL_MARGIN_MS = 5_000;

/** Errors about the destination, which the peer reports exactly as this gateway would: passed on with their code. */
const DESTINATION_ERRORS: readonly (abstract new (...args: never[]) => SockgateError)[] = [
  PolicyDeniedError,
  ConnectRefusedError,
  HostUnreachableError,
  ConnectTimeoutError,
  DnsError,
  InvalidUriError,
  InvalidArgumentError,
  LimitExceededError,
  ConnectionResetError,
  AddressInUseError,
];

interface CompiledPeer {
  /** `peers[i]`, for logs and errors. */
  readonly key: string;
  readonly via: string;
  readonly cidr: [ipaddr.IPv4 | ipaddr.IPv6, number] | undefined;
  /** An address literal: matched against the address the destination resolved to. */
  readonly address: string | undefined;
  /** A host name: matched against the host as the caller wrote it. */
  readonly host: string | undefined;
  /** From `*.domain`: ".domain". */
  readonly suffix: string | undefined;
  readonly ports: readonly [number, number] | undefined;
  readonly transports: readonly ('rdma' | 'tcp' | 'grpc')[];
  readonly token: string | undefined;
  readonly tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined;
  /** Which SDK Gateway object serves this route: one per via and credentials. */
  readonly gatewayKey: string;
}

/** A host socket opened through a peer: what the socket table records about the hop. */
export interface PeerStream {
  readonly hop: PeerHop;
  /** The real host socket's addresses, as the peer reports them. */
  readonly localUri: string;
  readonly remoteUri: string;
  /** Settles when the hop's data plane says how the stream ended: undefined when cleanly (or unknown), else the error. */
  readonly failure: Promise<SockgateError | undefined>;
  /** How the kernel carries the data connection to the peer, when the hop rides the tcp plane. */
  readonly dataConnection: (() => PeerDataConnection | undefined) | undefined;
}

/**
 * Normalized address text (IPv4-mapped IPv6 folded to IPv4, IPv4-compatible
 * ::a.b.c.d kept IPv6, which ipaddr.js would fold), or undefined.
 */
function normalizeAddress(text: string): string | undefined {
  const addr = parseAddress(text);
  return addr && formatAddress(addr);
}

function compile(p: PeerConfig, i: number): CompiledPeer {
  const key = `peers[${i}]`;
  let cidr: CompiledPeer['cidr'];
  if (p.match.cidr !== undefined) {
    try {
      // The prefix's address in hex form first: ipaddr.js reads a dotted ::a.b.c.d as mapped.
      const slash = p.match.cidr.lastIndexOf('/');
      const literal = addressBytes(p.match.cidr.slice(0, slash));
      const [addr, bits] = ipaddr.parseCIDR(literal ? `${formatAddress(literal)}${p.match.cidr.slice(slash)}` : p.match.cidr);
      // An IPv4-mapped prefix is an IPv4 prefix: addresses are folded the same way.
      cidr = addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96 ? [(addr as ipaddr.IPv6).toIPv4Address(), bits - 96] : [addr, bits];
    } catch (err) {
      throw new InvalidArgumentError(`${key}.match.cidr: ${JSON.stringify(p.match.cidr)} is not a valid CIDR`, { cause: err });
    }
  }
  let address: string | undefined;
  let host: string | undefined;
  let suffix: string | undefined;
  if (p.match.host !== undefined) {
    const h = p.match.host.toLowerCase().replace(/\.$/, '');
    if (isIP(h) !== 0) address = normalizeAddress(h);
    else if (h.startsWith('*.')) suffix = h.slice(1);
    else host = h;
  }
  let ports: CompiledPeer['ports'];
  if (p.match.ports !== undefined) {
    const m = /^([0-9]+)(?:-([0-9]+))?$/.exec(String(p.match.ports));
    const lo = Number(m?.[1]);
    const hi = m?.[2] === undefined ? lo : Number(m[2]);
    if (!m || lo > hi || hi > 65535) throw new InvalidArgumentError(`${key}.match.ports: ${JSON.stringify(p.match.ports)} is not a port or a range like 1024-65535`);
    ports = [lo, hi];
  }
  const read = (file: string | undefined, what: string): Buffer | undefined => {
    if (file === undefined) return undefined;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new InvalidArgumentError(`${key}.tls.${what}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const tls = p.tls ? { ca: read(p.tls.ca, 'ca'), cert: read(p.tls.cert, 'cert'), key: read(p.tls.key, 'key') } : undefined;
  return {
    key,
    via: p.via,
    cidr,
    address,
    host,
    suffix,
    ports,
    transports: p.transports,
    token: p.token,
    tls: tls && Object.fromEntries(Object.entries(tls).filter(([, v]) => v !== undefined)),
    gatewayKey: JSON.stringify([p.via, p.token ?? '', p.tls ?? {}]),
  };
}

/** The peer's error as the caller should see it (same code for destination errors; the hop's own failures as unreachable). */
function callerError(err: unknown, via: string): SockgateError {
  const e = err instanceof SockgateError ? err : new SockgateError(String((err as Error)?.message ?? err), { cause: err });
  const what = `via peer gateway ${via}: ${e.message}`;
  const cls = DESTINATION_ERRORS.find((c) => e instanceof c) as (new (message?: string, options?: { cause?: unknown; rule?: string }) => SockgateError) | undefined;
  if (cls) return new cls(what, { cause: e, ...(e.rule !== undefined ? { rule: e.rule } : {}) });
  return new HostUnreachableError(`${what} (${e.code})`, { cause: e });
}

export class PeerRouter {
  readonly #peers: readonly CompiledPeer[];
  /** SDK Gateways by gatewayKey; a failed connect is forgotten so the next socket tries again. */
  readonly #gateways = new Map<string, Promise<PeerGatewayClient>>();
  /** Hops of the host sockets opened through peers, for the socket table. */
  readonly #hops = new WeakMap<NetSocket, PeerStream>();
  #closed = false;

  constructor(
    peers: readonly PeerConfig[],
    private readonly logger: Logger,
    private readonly connectPeer: PeerGatewayConnector | undefined,
    /** Config smc.peer_dial: dial the data connections to peers as kernel SMC. */
    private readonly smcDial: 'off' | 'prefer' = 'off',
  ) {
    if (peers.length && !connectPeer) {
      throw new InvalidArgumentError('config `peers` needs a connector for peer gateways (GatewayOptions.peerGateways; the sockgate CLI passes the SDK\'s)');
    }
    this.#peers = peers.map(compile);
  }

  /** Whether any route is configured. */
  get size(): number {
    return this.#peers.length;
  }

  /** The first route whose every given key matches the destination. */
  match(target: PeerTarget): CompiledPeer | undefined {
    if (!this.#peers.length || target.uri.protocol !== 'tcp') return undefined;
    const written = target.uri.host.toLowerCase().replace(/\.$/, '');
    const address = normalizeAddress(target.address);
    for (const p of this.#peers) {
      if (p.ports && (target.uri.port < p.ports[0] || target.uri.port > p.ports[1])) continue;
      if (p.cidr) {
        if (!address) continue;
        const a = ipaddr.parse(address);
        if (a.kind() !== p.cidr[0].kind() || !a.match(p.cidr)) continue;
      }
      if (p.address !== undefined && p.address !== address) continue;
      if (p.host !== undefined && p.host !== written) continue;
      if (p.suffix !== undefined && !written.endsWith(p.suffix)) continue;
      return p;
    }
    return undefined;
  }

  /**
   * Open a stream to `target` through `peer`. Resolves with the descriptor-
   * backed socket (paused, half-open allowed); its hop is `hopOf(socket)`.
   * Errors carry the caller-facing codes.
   */
  async connect(peer: CompiledPeer, target: PeerTarget, timeoutMs: number, options: readonly SocketOption[] = [], signal?: AbortSignal): Promise<NetSocket> {
    const h = target.uri.host;
    const uri = `${target.uri.scheme}://${isIP(h) === 6 ? `[${h}]` : h}:${target.uri.port}`;
    const started = Date.now();
    let opened;
    try {
      const gw = await this.#gateway(peer, timeoutMs + CONTROL_MARGIN_MS);
      const noDelay = options.find((o) => o.option?.$case === 'noDelay')?.option;
      const keepAlive = options.find((o) => o.option?.$case === 'keepAliveMs')?.option;
      opened = await gw.openStream(uri, {
        transports: peer.transports,
        timeoutMs,
        deadlineMs: Math.max(1, timeoutMs + CONTROL_MARGIN_MS - (Date.now() - started)),
        ...(signal ? { signal } : {}),
        ...(noDelay?.$case === 'noDelay' ? { noDelay: noDelay.noDelay } : {}),
        ...(keepAlive?.$case === 'keepAliveMs' ? { keepAliveMs: keepAlive.keepAliveMs } : {}),
      });
    } catch (err) {
      const e = callerError(err, peer.via);
      this.logger.info({ via: peer.via, route: peer.key, uri, code: e.code, err: e.message }, 'peer gateway did not open the host socket');
      throw e;
    }
    const fallbacks: Fallback[] = opened.fallbacks.map((f) => ({
      kind: transportKindOfName(f.transport) ?? TransportKind.TRANSPORT_KIND_UNSPECIFIED,
      reason: f.reason ? declineReasonFromJSON(`DECLINE_REASON_${f.reason}`) : DeclineReason.DECLINE_REASON_UNSPECIFIED,
      detail: f.detail,
    }));
    const stream: PeerStream = {
      hop: { via: peer.via, socketId: opened.socketId, transport: transportKindOfName(opened.transport) ?? TransportKind.TRANSPORT_KIND_UNSPECIFIED, fallbacks, moves: [] },
      localUri: opened.localUri,
      remoteUri: opened.remoteUri,
      failure: opened.failure,
      dataConnection: opened.dataConnection ? () => opened.dataConnection!() : undefined,
    };
    this.#hops.set(opened.socket, stream);
    // Live failover of the hop (an rdma slot resumed on the peer's tcp plane, clients/sdk RdmaSocket 'moved'):
    // the socket's status shows the hop's transport now; the peer's own SocketInfo has the move and its cause.
    opened.socket.once('moved', (m: { to?: string; cause?: string; atMs?: number }) => {
      const to = transportKindOfName(m.to ?? '') ?? TransportKind.TRANSPORT_KIND_UNSPECIFIED;
      stream.hop.moves.push({ from: stream.hop.transport, to, cause: m.cause ?? '', atMs: m.atMs ?? Date.now() });
      stream.hop.transport = to;
      this.logger.info({ via: peer.via, route: peer.key, uri, peerSocket: opened.socketId, to: m.to, cause: m.cause }, 'peer hop moved (live failover)');
    });
    this.logger.info(
      { via: peer.via, route: peer.key, uri, peerSocket: opened.socketId, transport: opened.transport, fallbacks: opened.fallbacks.map((f) => `${f.transport}: ${f.reason}`) },
      'host socket opened through peer gateway',
    );
    return opened.socket;
  }

  /** The hop of a socket connect() opened. */
  hopOf(sock: NetSocket): PeerStream | undefined {
    return this.#hops.get(sock);
  }

  async #gateway(peer: CompiledPeer, deadlineMs: number): Promise<PeerGatewayClient> {
    if (this.#closed) throw new HostUnreachableError('the gateway is stopping: no new peer connections');
    let gw = this.#gateways.get(peer.gatewayKey);
    if (!gw) {
      gw = (async () => {
        const opts = { deadlineMs, ...(this.smcDial === 'prefer' ? { smc: 'prefer' as const } : {}) };
        return this.connectPeer!(peer.via, { ...(peer.token ? { token: peer.token } : {}), ...(peer.tls ? { tls: peer.tls } : {}) }, opts);
      })();
      this.#gateways.set(peer.gatewayKey, gw);
      gw.then(
        () => this.logger.info({ via: peer.via, route: peer.key }, 'connected to peer gateway'),
        () => {
          if (this.#gateways.get(peer.gatewayKey) === gw) this.#gateways.delete(peer.gatewayKey);
        },
      );
    }
    return gw;
  }

  /** Close every peer connection (sockets opened through them are destroyed). Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#gateways.values()];
    this.#gateways.clear();
    await Promise.all(all.map((p) => p.then((g) => g.close(), () => {})));
  }
}
