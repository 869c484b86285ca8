/**
 * Transparent mode, TCP (`sockgate proxy --transparent ADDR`): the kernel
 * redirects an application's connections here (nftables `redirect`, or
 * `tproxy`; `sockgate proxy rules` writes the rules), and each one is opened
 * to its original destination through the gateway, under the gateway's
 * policy, with the same link as a `-L` forward (native where the SDK can).
 *
 * The original destination: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from
 * conntrack under `redirect`; the accepted socket's own local address under
 * `tproxy` (the listener carries IP_TRANSPARENT for that). A connection made
 * straight to the listener (no redirect) would loop back here: it is reset.
 * A destination the gateway refuses is reset too, so the application's first
 * read or write fails with ECONNRESET (the kernel already completed its
 * handshake with us).
 */
import type { Server, Socket } from 'node:net';
import { SockgateError, NativeError } from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import type { GatewaySocket } from '../sdk/socket.js';
import { native, nativeError } from '../sdk/native-optional.js';
import { formatEndpoint, joinHostPort, type LocalEndpoint } from './address.js';
import type { ForwardOptions, ForwardStats } from './forward.js';
import { resetLocal } from './forward.js';
import type { ProxyGateway } from './link.js';
import { boundAddress, closeServer, listenLocal } from './local.js';
import { SessionSet, linkSession, splice } from './splice.js';

const trace = tracer('proxy');

/** Counters of the transparent listener. */
export interface TransparentStats extends ForwardStats {
  /** Connections refused because they were not redirected (made straight to the listener). */
  notRedirected: number;
}

/** The fd of a net.Socket or net.Server (libuv's TCP handle); -1 if it has none. */
export function handleFd(h: Socket | Server): number {
  const fd = (h as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** The transparent-mode addon or a clear error naming why it is unavailable. */
export function transparentNative(): NonNullable<typeof native> {
  if (!native) throw new NativeError(`transparent mode needs the native addon (original destinations, IP_TRANSPARENT): ${nativeError}`);
  return native;
}

export class TransparentListener {
  readonly stats: TransparentStats = { opened: 0, failed: 0, notRedirected: 0 };
  private server: Server | undefined;
  private readonly sessions = new SessionSet();
  private boundValue = '';
  private listenPort = 0;
  /** Whether the listener has IP_TRANSPARENT (tproxy can deliver to it); the reason if not. */
  tproxy: { ok: boolean; reason: string } = { ok: false, reason: 'not started' };

  constructor(
    readonly listen: Extract<LocalEndpoint, { kind: 'tcp' }>,
    private readonly gw: ProxyGateway,
    private readonly options: ForwardOptions,
  ) {}

  get address(): string {
    return this.boundValue;
  }

  /** The port actually listened on (UDP binds the same one). */
  get port(): number {
    return this.listenPort;
  }

  get sessionsOpen(): number {
    return this.sessions.size;
  }

  async start(): Promise<void> {
    const n = transparentNative();
    this.server = await listenLocal(this.listen, (sock) => this.onConnection(sock), `--transparent ${formatEndpoint(this.listen)}`);
    this.boundValue = boundAddress(this.server);
    this.listenPort = (this.server.address() as { port: number }).port;
    // IP_TRANSPARENT needs CAP_NET_ADMIN; `redirect` works without it, `tproxy` does not.
    try {
      n.setTransparent(handleFd(this.server));
      this.tproxy = { ok: true, reason: '' };
    } catch (err) {
      this.tproxy = { ok: false, reason: (err as Error).message };
      this.options.logger.warn({ listen: this.boundValue, err: this.tproxy.reason }, 'transparent: no IP_TRANSPARENT on the listener (needs CAP_NET_ADMIN): nftables redirect works, tproxy does not');
    }
    this.options.logger.info({ listen: this.boundValue, tproxy: this.tproxy.ok }, 'transparent proxy listening');
  }

  private onConnection(sock: Socket): void {
    sock.on('error', () => {});
    const peer = joinHostPort(sock.remoteAddress ?? '', sock.remotePort ?? 0);
    let dest: { address: string; port: number; source: string };
    try {
      dest = transparentNative().originalDestination(handleFd(sock));
    } catch (err) {
      this.stats.failed++;
      this.options.logger.warn({ peer, err: (err as Error).message }, 'transparent: no original destination');
      return resetLocal(sock);
    }
    // Not redirected: the destination is this listener itself; opening it would loop.
    if (dest.source === 'local' && dest.port === this.listenPort) {
      this.stats.notRedirected++;
      trace(`transparent: ${peer} connected straight to ${joinHostPort(dest.address, dest.port)}: not redirected, reset`);
      return resetLocal(sock);
    }
    const uri = `tcp://${joinHostPort(dest.address, dest.port)}`;
    const ac = new AbortController();
    const onEarlyClose = () => ac.abort();
    sock.once('close', onEarlyClose);
    const opts = {
      signal: ac.signal,
      noDelay: true,
      ...(this.options.transports ? { transports: this.options.transports } : {}),
      ...(this.options.connectTimeoutMs ? { timeoutMs: this.options.connectTimeoutMs } : {}),
    };
    const fail = (err: unknown) => {
      sock.removeListener('close', onEarlyClose);
      this.stats.failed++;
      const e = err as SockgateError;
      this.options.logger.warn({ peer, connect: uri, via: dest.source, code: e.code, err: e.message }, 'transparent: gateway connect failed');
      resetLocal(sock);
    };
    const work = this.gw.link
      ? this.gw.link(sock, uri, opts).then((link) => {
          sock.removeListener('close', onEarlyClose);
          this.stats.opened++;
          trace(`transparent ${peer} -> ${uri} (${dest.source}) via ${link.transport} (${link.socketId}) ${link.native ? 'native' : `JS relay: ${link.relayReason}`}`);
          this.sessions.add(linkSession(link));
        }, fail)
      : this.gw.connect(uri, opts).then((gsock: GatewaySocket) => {
          sock.removeListener('close', onEarlyClose);
          if (sock.destroyed) return void gsock.destroy();
          this.stats.opened++;
          this.sessions.add(splice(sock, gsock));
        }, fail);
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
