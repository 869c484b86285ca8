/**
 * The host socket backend: resolves guest URIs on the host, asks policy about
 * the address the socket will really use (so DNS cannot smuggle a guest past a
 * rule), and opens real host sockets, with connect errors mapped to precise
 * errors (refused, unreachable, timeout, DNS failure). A stream socket whose
 * destination matches a `peers` route is opened through that peer gateway
 * instead (server/peers.ts), after this gateway's policy allowed it; the
 * address the peer then reports it dialled is judged again here.
 */
import { lookup } from 'node:dns/promises';
import { Socket as NetSocket, createServer, type Server as NetServer } from 'node:net';
import { createSocket, type Socket as DgramSocket } from 'node:dgram';
import { dialAddress } from './address.js';
import { ConnectTimeoutError, DnsError, PolicyDeniedError, fromSystemError } from '../proto/errors.js';
import type { Direction, Identity, Policy } from './policy.js';
import type { PeerRouter, PeerStream } from './peers.js';
import type { SocketOption } from '../proto/gen/sockgate/v1/sockgate.js';
import { parseUri, type L4Protocol, type SocketUri } from '../proto/uri.js';
import { tracer } from '../native/trace.js';
import type { HostSmc } from './host-smc.js';

const trace = tracer('host');
/** Rule named when a peer gateway does not say which address it dialled: this gateway cannot judge it, so it refuses. */
const PEER_ADDRESS_RULE = 'peer-address';

export interface ResolvedTarget {
  uri: SocketUri;
  /** The address the socket uses: the one policy judged (IPv4-mapped IPv6 folded to the IPv4 address it reaches). */
  address: string;
  family: 4 | 6;
  /** Policy rule that allowed it. */
  rule: string;
  /** Who asked: a socket opened through a peer is judged again, for this identity, with the address the peer dialled. */
  identity: Identity;
  /** The allowing rule says `smc: prefer`: a stream socket is opened as kernel SMC where the kernel has it. */
  smc?: boolean;
}

/** One name resolution: the first address for `family` (0: either), in the resolver's order. */
export type HostLookup = (host: string, family: 0 | 6) => Promise<{ address: string; family: number }>;

const systemLookup: HostLookup = (host, family) => lookup(host, { family, verbatim: true });

export class HostBackend {
  constructor(
    private readonly policy: Policy,
    private readonly highWatermark: number,
    /** Peer gateway routes; without it every socket is opened here. */
    private readonly peers?: PeerRouter,
    /** The resolver (tests give their own, e.g. to make two gateways disagree). */
    private readonly lookupHost: HostLookup = systemLookup,
    /** Kernel SMC for rules that say `smc: prefer`; without it those open plain TCP. */
    private readonly smc?: HostSmc,
  ) {}

  /** Resolve a URI's host and check policy for `direction`. Throws InvalidUriError, DnsError, PolicyDeniedError. */
  async resolve(identity: Identity, input: string, direction: Direction, protocol?: L4Protocol): Promise<ResolvedTarget> {
    const uri = parseUri(input, { allowPortZero: direction !== 'connect', ...(protocol ? { protocol } : {}) });
    let written: string;
    if (uri.hostIsIp) {
      written = uri.host;
    } else {
      // The only lookup: the address judged below is the address the socket dials (no second resolution).
      try {
        written = (await this.lookupHost(uri.host, uri.family === 6 ? 6 : 0)).address;
      } catch (err) {
        throw new DnsError(`cannot resolve "${uri.host}": ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
      }
    }
    // ::ffff:a.b.c.d reaches the IPv4 host a.b.c.d: judged as it and dialled as it; ::a.b.c.d stays IPv6.
    let address: string;
    let family: 4 | 6;
    try {
      ({ address, family } = dialAddress(written));
    } catch (err) {
      throw new DnsError(`"${uri.host}" resolved to ${JSON.stringify(written)}, which is not an IP address`, { cause: err });
    }
    // Port 0 (listen/bind): the kernel picks the port, so policy is asked once it is known (checkBound).
    if (uri.port === 0) return { uri, address, family, rule: '', identity };
    const { rule, smc } = this.policy.check(identity, { direction, protocol: uri.protocol, host: uri.host, address, port: uri.port });
    trace(`${identity.name} ${direction} ${input} -> ${address} allowed by ${rule}${smc ? ' (smc: prefer)' : ''}`);
    return { uri, address, family, rule, identity, smc: smc === true };
  }

  /** Policy check of a listen/bind on port 0, with the port the kernel chose. Throws PolicyDeniedError. */
  checkBound(identity: Identity, target: ResolvedTarget, direction: Direction, port: number): void {
    if (target.uri.port !== 0) return;
    const { rule } = this.policy.check(identity, { direction, protocol: target.uri.protocol, host: target.uri.host, address: target.address, port });
    target.rule = rule;
  }

  /**
   * Open a TCP connection; the socket comes back paused with half-open allowed.
   * Through a peer gateway when a `peers` route matches (`options` then go to
   * the peer, which applies them to the real host socket; see peerStreamOf).
   */
  connectTcp(target: ResolvedTarget, timeoutMs: number, signal?: AbortSignal, options?: readonly SocketOption[]): Promise<NetSocket> {
    const peer = this.peers?.match(target);
    if (peer) {
      trace(`connect ${target.uri.host}:${target.uri.port} through peer gateway ${peer.via} (${peer.key})`);
      return this.peers!.connect(peer, target, timeoutMs, options, signal).then((sock) => this.#markPeerSmc(this.#judgePeerDial(target, sock)));
    }
    if (target.smc && this.smc?.available) return this.#connectSmc(target, timeoutMs, signal);
    return new Promise((resolve, reject) => {
      const sock = new NetSocket({ allowHalfOpen: true, highWaterMark: this.highWatermark } as ConstructorParameters<typeof NetSocket>[0]);
      let done = false;
      const what = `connect ${target.uri.scheme}://${target.uri.host}:${target.uri.port} (${target.address})`;
      const finish = (err?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        sock.removeListener('error', finish);
        if (err) {
          sock.destroy();
          reject(err instanceof ConnectTimeoutError ? err : fromSystemError(err, what));
        } else {
          resolve(sock);
        }
      };
      const onAbort = () => finish(new ConnectTimeoutError(`${what}: cancelled by the caller`));
      const timer = setTimeout(() => finish(new ConnectTimeoutError(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
      signal?.addEventListener('abort', onAbort);
      sock.once('error', finish);
      sock.pause();
      sock.connect({ host: target.address, port: target.uri.port, family: target.family }, () => finish());
    });
  }

  /** connectTcp as kernel SMC: the addon connects (TCP, then the CLC handshake or the kernel's fallback) off the JS thread. */
  #connectSmc(target: ResolvedTarget, timeoutMs: number, signal?: AbortSignal): Promise<NetSocket> {
    const what = `connect ${target.uri.scheme}://${target.uri.host}:${target.uri.port} (${target.address}) as smc`;
    if (signal?.aborted) return Promise.reject(new ConnectTimeoutError(`${what}: cancelled by the caller`));
    return new Promise((resolve, reject) => {
      let done = false;
      const onAbort = () => {
        done = true;
        reject(new ConnectTimeoutError(`${what}: cancelled by the caller`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.smc!.connect(target.family, target.address, target.uri.port, timeoutMs, this.highWatermark).then(
        (sock) => {
          signal?.removeEventListener('abort', onAbort);
          if (done) sock.destroy(); // cancelled while the kernel connected
          else resolve(sock);
        },
        (err: NodeJS.ErrnoException) => {
          signal?.removeEventListener('abort', onAbort);
          if (done) return;
          reject(err.code === 'ETIMEDOUT' ? new ConnectTimeoutError(`${what}: no answer within ${timeoutMs} ms`) : fromSystemError(err, what));
        },
      );
    });
  }

  /**
   * The kernel's view of a host socket (tcp, or smc with its mode / fallback
   * reason). For a socket through a peer gateway: its data connection to the
   * peer on the tcp plane (smc under config smc.peer_dial), undefined on others.
   */
  describeHostSocket(sock: object): ReturnType<HostSmc['describe']> | undefined {
    if (this.smc?.isSmc(sock)) return this.smc.describe(sock);
    const hop = this.peers?.hopOf(sock as NetSocket);
    if (hop) return hop.dataConnection?.();
    return { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' };
  }

  /**
   * A data connection to a peer the SDK dialed as SMC (config smc.peer_dial) is
   * marked like any SMC host socket: counted, described, and never spliced.
   */
  #markPeerSmc(sock: NetSocket): NetSocket {
    const dc = this.peers?.hopOf(sock)?.dataConnection?.();
    if (dc?.proto === 'smc') this.smc?.track(sock, (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1, 'peer-dial');
    return sock;
  }

  /**
   * The peer resolved the name in its own network and reports the address it
   * dialled: this gateway's rules judge that address too (the caller's
   * identity, the name as written); a denial aborts the socket.
   */
  #judgePeerDial(target: ResolvedTarget, sock: NetSocket): NetSocket {
    const hop = this.peers!.hopOf(sock);
    const via = hop?.hop.via ?? 'peer';
    try {
      let dialled;
      try {
        dialled = parseUri(hop?.remoteUri ?? '', { protocol: 'tcp' });
        if (!dialled.hostIsIp) throw new Error('not an address');
      } catch (err) {
        throw new PolicyDeniedError(
          `connect ${target.uri.scheme}://${target.uri.host}:${target.uri.port} via peer gateway ${via}: the peer did not report the address it dialled (${JSON.stringify(hop?.remoteUri ?? '')}), so this gateway's policy cannot judge it`,
          { cause: err, rule: PEER_ADDRESS_RULE },
        );
      }
      const { address } = dialAddress(dialled.host);
      const { rule } = this.policy.check(target.identity, { direction: 'connect', protocol: 'tcp', host: target.uri.host, address, port: dialled.port });
      trace(`${target.identity.name} connect ${target.uri.host}:${target.uri.port} via ${via} dialled ${address}:${dialled.port}, allowed here by ${rule}`);
      return sock;
    } catch (err) {
      sock.destroy();
      if (err instanceof PolicyDeniedError && err.rule !== PEER_ADDRESS_RULE) {
        throw new PolicyDeniedError(`via peer gateway ${via}, which dialled ${hop?.remoteUri}: ${err.message}`, { cause: err, rule: err.rule });
      }
      throw err;
    }
  }

  /** The peer hop of a socket connectTcp opened through a peer gateway; undefined for a direct one. */
  peerStreamOf(sock: NetSocket): PeerStream | undefined {
    return this.peers?.hopOf(sock);
  }

  /** Listen on a host address; inbound sockets arrive paused with half-open allowed. */
  async listenTcp(identity: Identity, target: ResolvedTarget, backlog: number): Promise<NetServer> {
    const server = await new Promise<NetServer>((resolve, reject) => {
      const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, highWaterMark: this.highWatermark } as Parameters<typeof createServer>[0]);
      server.once('error', (err) => reject(fromSystemError(err, `listen ${target.uri.scheme}://${target.uri.host}:${target.uri.port}`)));
      // An IPv6 address binds IPv6 only: policy judged exactly this address, not the IPv4 side of a dual-stack socket.
      const done = () => {
        server.removeAllListeners('error');
        resolve(server);
      };
      if (target.smc && this.smc?.available && target.uri.port !== 0) {
        // `smc: prefer` on a listen: the kernel accepts SMC peers as SMC, and plain TCP ones with a fallback.
        let fd: number;
        try {
          fd = this.smc.listenFd(target.address, target.uri.port, backlog || 511);
        } catch (err) {
          reject(fromSystemError(err, `listen ${target.uri.scheme}://${target.uri.host}:${target.uri.port} as smc`));
          return;
        }
        this.smc.track(server, fd);
        // Registered before the listener socket's own handler: the accepted socket is marked before it is wrapped.
        server.on('connection', (sock: NetSocket) => this.smc!.track(sock, (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1, 'accept'));
        server.listen({ fd, backlog: backlog || 511 }, done);
      } else {
        server.listen({ host: target.address, port: target.uri.port, backlog: backlog || 511, ipv6Only: target.family === 6 }, done);
      }
    });
    try {
      this.checkBound(identity, target, 'listen', (server.address() as { port: number }).port);
    } catch (err) {
      server.close();
      throw err;
    }
    return server;
  }

  /** A UDP socket bound to `local` (port 0 picks one) and, if `remote` is given, connected to it. */
  async openUdp(identity: Identity, local: ResolvedTarget | undefined, remote: ResolvedTarget | undefined): Promise<DgramSocket> {
    const family = (local ?? remote)!.family;
    const sock = createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6 });
    const what = `udp ${local ? `bind ${local.address}:${local.uri.port}` : ''}${remote ? ` connect ${remote.address}:${remote.uri.port}` : ''}`.trim();
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject);
        sock.bind(local ? { address: local.address, port: local.uri.port } : { port: 0 }, () => {
          sock.removeListener('error', reject);
          resolve();
        });
      });
      if (remote) {
        await new Promise<void>((resolve, reject) => {
          sock.once('error', reject);
          sock.connect(remote.uri.port, remote.address, (err?: Error) => {
            sock.removeListener('error', reject);
            if (err) reject(err);
            else resolve();
          });
        });
      }
      if (local) this.checkBound(identity, local, 'bind', sock.address().port);
    } catch (err) {
      try {
        sock.close();
      } catch {
        // never bound
      }
      throw fromSystemError(err, what);
    }
    return sock;
  }
}
