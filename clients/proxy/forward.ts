/**
 * Port forwards, as `ssh -L` and `ssh -R` have them:
 * - LocalForward (`-L 127.0.0.1:5432=tcp://db:5432`): listen in the guest; each
 *   connection opens a gateway socket to the URI and the two are spliced.
 * - RemoteForward (`-R tcp://0.0.0.0:8080=127.0.0.1:80`): the gateway listens on
 *   its host; each inbound connection is delivered into the guest and spliced
 *   to the local target.
 * The forward owns its listener and its sessions; the gateway connection is the proxy's.
 */
import type { Server, Socket } from 'node:net';
import type { Logger } from '../../native/log.js';
import { SockgateError } from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import type { GatewayServer, LinkableSocket } from '../sdk/gateway.js';
import type { GatewaySocket, TransportName } from '../sdk/socket.js';
import { formatEndpoint, type LocalForwardSpec, type RemoteForwardSpec } from './address.js';
import type { ProxyGateway } from './link.js';
import { boundAddress, closeServer, dialLocal, listenLocal } from './local.js';
import { SessionSet, linkSession, splice } from './splice.js';
import { resetSocket } from '../sdk/reset-socket.js';

const trace = tracer('proxy');

/** First wait before listening again on the gateway after its listener was lost (gateway restart, control channel drop). */
const RELISTEN_MIN_MS = 250;
/** Longest wait between attempts to listen again (doubling from RELISTEN_MIN_MS). */
const RELISTEN_MAX_MS = 10_000;

/** Options every forward shares. */
export interface ForwardOptions {
  logger: Logger;
  /** Transports to offer for data connections; the SDK's default if unset. */
  transports?: readonly TransportName[];
  /** Gateway-side connect timeout in ms; the gateway's default if unset. */
  connectTimeoutMs?: number;
}

/** Counters of one forward (or the SOCKS server). */
export interface ForwardStats {
  /** Connections spliced end to end. */
  opened: number;
  /** Connections that failed before they were spliced. */
  failed: number;
}

/** Abort a local socket: a TCP reset where possible, so the app sees ECONNRESET rather than a clean EOF. */
export function resetLocal(sock: Socket): void {
  resetSocket(sock);
}

export class LocalForward {
  readonly stats: ForwardStats = { opened: 0, failed: 0 };
  /** The local listener; undefined until start() and after close(). */
  private server: Server | undefined;
  /** Connections spliced to a gateway socket until both sides close, and those still waiting for their gateway socket. */
  private readonly sessions = new SessionSet();
  private boundValue = '';

  constructor(
    readonly spec: LocalForwardSpec,
    private readonly gw: ProxyGateway,
    private readonly options: ForwardOptions,
  ) {}

  /** The address actually listened on (`host:port` with the real port, or `unix:/path`). */
  get address(): string {
    return this.boundValue;
  }

  /** Sessions open or being connected. */
  get sessionsOpen(): number {
    return this.sessions.size;
  }

  async start(): Promise<void> {
    this.server = await listenLocal(this.spec.listen, (sock) => this.onConnection(sock), `-L ${formatEndpoint(this.spec.listen)}`);
    this.boundValue = boundAddress(this.server);
    this.options.logger.info({ listen: this.boundValue, connect: this.spec.connect }, 'local forward listening');
  }

  private onConnection(sock: Socket): void {
    const ac = new AbortController();
    const onEarlyClose = () => ac.abort();
    sock.once('close', onEarlyClose);
    sock.on('error', () => {});
    const peer = `${sock.remoteAddress ?? 'unix'}:${sock.remotePort ?? ''}`;
    if (this.gw.link) return this.linkConnection(sock, peer, ac, onEarlyClose);
    const work = this.gw
      .connect(this.spec.connect, {
        signal: ac.signal,
        noDelay: true,
        ...(this.options.transports ? { transports: this.options.transports } : {}),
        ...(this.options.connectTimeoutMs ? { timeoutMs: this.options.connectTimeoutMs } : {}),
      })
      .then(
        (gsock: GatewaySocket) => {
          sock.removeListener('close', onEarlyClose);
          if (sock.destroyed) {
            gsock.destroy();
            return;
          }
          this.stats.opened++;
          trace(`-L ${this.boundValue}: ${peer} -> ${this.spec.connect} via ${gsock.transport} (${gsock.socketId})`);
          this.sessions.add(splice(sock, gsock));
        },
        (err: unknown) => {
          this.stats.failed++;
          const e = err as SockgateError;
          this.options.logger.warn({ listen: this.boundValue, connect: this.spec.connect, peer, code: e.code, err: e.message }, 'local forward: gateway connect failed');
          resetLocal(sock);
        },
      );
    this.sessions.pending(work, () => ac.abort());
  }

  /** The connection joined by a link: native where the SDK can, its JS relay otherwise (it says which). */
  private linkConnection(sock: Socket, peer: string, ac: AbortController, onEarlyClose: () => void): void {
    const work = this.gw.link!(sock, this.spec.connect, {
      signal: ac.signal,
      noDelay: true,
      ...(this.options.transports ? { transports: this.options.transports } : {}),
      ...(this.options.connectTimeoutMs ? { timeoutMs: this.options.connectTimeoutMs } : {}),
    }).then(
      (link) => {
        sock.removeListener('close', onEarlyClose);
        this.stats.opened++;
        trace(`-L ${this.boundValue}: ${peer} -> ${this.spec.connect} via ${link.transport} (${link.socketId}) ${link.native ? 'native' : `JS relay: ${link.relayReason}`}`);
        this.sessions.add(linkSession(link));
      },
      (err: unknown) => {
        sock.removeListener('close', onEarlyClose);
        this.stats.failed++;
        const e = err as SockgateError;
        this.options.logger.warn({ listen: this.boundValue, connect: this.spec.connect, peer, code: e.code, err: e.message }, 'local forward: gateway connect failed');
        resetLocal(sock);
      },
    );
    this.sessions.pending(work, () => ac.abort());
  }

  /** Stop listening; let open connections finish for up to `drainMs`, then abort them. */
  async close(drainMs = 0): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await closeServer(server);
    await this.sessions.drain(drainMs);
  }
}

export class RemoteForward {
  /** `relistens` counts listeners re-established after the gateway lost one. */
  readonly stats: ForwardStats & { relistens: number } = { opened: 0, failed: 0, relistens: 0 };
  /** The gateway's listener; undefined before start(), while listening again, and after close(). */
  private listener: GatewayServer | undefined;
  private readonly sessions = new SessionSet();
  private boundValue = '';
  /** Set by close(): no more listening again. */
  private stopped = false;
  /** The pending attempt to listen again, if any. */
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs = RELISTEN_MIN_MS;

  constructor(
    readonly spec: RemoteForwardSpec,
    private readonly gw: ProxyGateway,
    private readonly options: ForwardOptions,
  ) {}

  /** The host address the gateway listens on, with the real port (e.g. `tcp://0.0.0.0:8080`). */
  get address(): string {
    return this.boundValue;
  }

  async start(): Promise<void> {
    await this.listen(this.spec.listen);
    this.options.logger.info({ listen: this.boundValue, target: formatEndpoint(this.spec.target) }, 'remote forward listening on the gateway host');
  }

  /**
   * Listen on the gateway. If the gateway loses the listener later (it
   * restarted, the control channel dropped), listen again on the same address
   * with backoff until close().
   */
  private async listen(uri: string): Promise<void> {
    const listener = await this.gw.listen(uri, { channels: true, ...(this.options.transports ? { transports: this.options.transports } : {}) });
    if (this.stopped) {
      await listener.close();
      return;
    }
    this.listener = listener;
    this.boundValue = listener.localUri;
    this.retryMs = RELISTEN_MIN_MS;
    listener.on('connection', (gsock: GatewaySocket) => this.onConnection(gsock));
    listener.on('channel', (ch: LinkableSocket) => this.onChannel(ch));
    const lost = (why: string) => {
      if (this.stopped || this.listener !== listener) return;
      this.listener = undefined;
      void listener.close().catch(() => {});
      this.options.logger.warn({ listen: this.boundValue, why }, 'remote forward: the gateway lost the listener; listening again');
      this.relisten();
    };
    listener.on('error', (err: Error) => lost(err.message));
    listener.on('close', () => lost('accept stream ended'));
  }

  private relisten(): void {
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      // The same address (with the port it had), so clients on the host keep reaching it.
      this.listen(this.boundValue || this.spec.listen).then(
        () => {
          if (this.stopped) return;
          this.stats.relistens++;
          this.options.logger.info({ listen: this.boundValue }, 'remote forward listening again');
        },
        (err: unknown) => {
          if (this.stopped) return;
          trace(`-R ${this.boundValue}: listen again failed: ${(err as Error).message}; next try in ${this.retryMs} ms`);
          this.retryMs = Math.min(this.retryMs * 2, RELISTEN_MAX_MS);
          this.relisten();
        },
      );
    }, this.retryMs);
  }

  private onConnection(gsock: GatewaySocket): void {
    gsock.pause();
    gsock.on('error', () => {});
    const target = formatEndpoint(this.spec.target);
    const ac = new AbortController();
    const work = dialLocal(this.spec.target, { signal: ac.signal }).then(
      (sock) => {
        if (gsock.destroyed) {
          sock.destroy();
          return;
        }
        this.stats.opened++;
        trace(`-R ${this.boundValue}: ${gsock.remoteUri} -> ${target} (${gsock.socketId})`);
        this.sessions.add(splice(gsock, sock));
      },
      (err: unknown) => {
        this.stats.failed++;
        const e = err as SockgateError;
        this.options.logger.warn({ listen: this.boundValue, target, from: gsock.remoteUri, code: e.code, err: e.message }, 'remote forward: local target unreachable');
        gsock.destroy(e instanceof Error ? e : undefined);
      },
    );
    this.sessions.pending(work, () => ac.abort());
  }

  /** An inbound socket to link to the local target (natively where the SDK can). */
  private onChannel(ch: LinkableSocket): void {
    const target = formatEndpoint(this.spec.target);
    const ac = new AbortController();
    const work = dialLocal(this.spec.target, { signal: ac.signal }).then(
      (sock) => {
        sock.pause();
        const link = ch.link(sock);
        this.stats.opened++;
        trace(`-R ${this.boundValue}: ${ch.meta.remoteUri} -> ${target} (${ch.meta.socketId}) ${link.native ? 'native' : `JS relay: ${link.relayReason}`}`);
        this.sessions.add(linkSession(link));
      },
      (err: unknown) => {
        this.stats.failed++;
        const e = err as SockgateError;
        this.options.logger.warn({ listen: this.boundValue, target, from: ch.meta.remoteUri, code: e.code, err: e.message }, 'remote forward: local target unreachable');
        ch.destroy();
      },
    );
    this.sessions.pending(work, () => ac.abort());
  }

  /** Stop the gateway's listener; let open connections finish for up to `drainMs`, then abort them. */
  async close(drainMs = 0): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const l = this.listener;
    this.listener = undefined;
    await l?.close();
    await this.sessions.drain(drainMs);
  }
}
