/**
 * A listener: a TCP server on a local address (loopback unless configured
 * otherwise) whose connections are balanced over one cluster. While the
 * cluster connects an upstream for a downstream connection, at most
 * PRECONNECT_BUFFER_BYTES of it are read (the rest waits in the kernel), so a
 * client that gives up is noticed; then a ProxySession joins the two.
 *
 * The listener owns its server and the sessions it started; it borrows
 * clusters, looking its cluster up by name for every connection so that a
 * reload takes effect for the next connection.
 */
import { once } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from '../../native/log.js';
import { AddressInUseError, fromSystemError } from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import type { Cluster } from './cluster.js';
import { CLOSE_REASONS, ProxySession, type CloseReason } from './proxy-session.js';
import { LinkableUpstream, LinkedSession } from './linked-session.js';
import { parseListenerAddress, type ListenerConfig } from './sidecar-config.js';

const TRACER = 'sidecar_listener';
const trace = tracer(TRACER);

/** listen(2) backlog: Node's default; connections beyond it wait in SYN retries, not in our memory. */
const LISTEN_BACKLOG = 511;
/**
 * Bytes read from a downstream connection while its upstream connects (so an
 * early reset is noticed and the first request is ready to go); at this many
 * reading pauses, and the rest waits in the kernel.
 */
const PRECONNECT_BUFFER_BYTES = 64 * 1024;

export interface ListenerStats {
  /** Downstream connections accepted. */
  total: number;
  /** Downstream connections open now (connecting or proxied). */
  active: number;
  /** Downstream connections ended, by reason. */
  closes: Record<CloseReason, number>;
}

export interface ListenerSnapshot {
  name: string;
  /** The bound address, host:port (the real port when configured with 0). */
  address: string;
  cluster: string;
  stats: ListenerStats;
}

/** The client address consistent hashing uses: the IP, IPv4-mapped IPv6 unwrapped. */
export function clientHashKey(sock: Socket): string {
  const a = sock.remoteAddress ?? '';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

export class Listener {
  readonly name: string;
  readonly stats: ListenerStats = {
    total: 0,
    active: 0,
    closes: Object.fromEntries(CLOSE_REASONS.map((r) => [r, 0])) as Record<CloseReason, number>,
  };
  /** Settings for the next connection; a reload swaps it. */
  config: ListenerConfig;
  /** Proxied connections, until both sides close. */
  private readonly sessions = new Set<ProxySession | LinkedSession>();
  /** Downstream connections waiting for an upstream, with the handle that abandons the wait. */
  private readonly connecting = new Map<Socket, AbortController>();
  private readonly server: Server;
  private bound: AddressInfo | undefined;
  private accepting = false;
  /** Set by closeConnections(): connects abandoned from now on count as `shutdown`. */
  private closingAll = false;

  constructor(
    config: ListenerConfig,
    private readonly clusterFor: (name: string) => Cluster | undefined,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.config = config;
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (sock) => void this.onConnection(sock));
    this.server.on('error', (err) => this.logger.error({ err, listener: this.name }, 'listener error'));
  }

  /** Bind the configured address. Rejects with AddressInUseError (or another typed error) if it cannot. */
  async bind(): Promise<AddressInfo> {
    const { host, port } = parseListenerAddress(this.config.address);
    try {
      // events.once rejects if 'error' comes first.
      const listening = once(this.server, 'listening');
      this.server.listen({ host, port, backlog: LISTEN_BACKLOG });
      await listening;
    } catch (err) {
      throw (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
        ? new AddressInUseError(`listener "${this.name}": address ${host}:${port} is already in use`, { cause: err })
        : fromSystemError(err, `listener "${this.name}" on ${host}:${port}`);
    }
    this.accepting = true;
    this.bound = this.server.address() as AddressInfo;
    trace(`${this.name}: listening on ${this.addressText}`);
    return this.bound;
  }

  /** host:port actually bound ('' before bind). */
  get addressText(): string {
    if (!this.bound) return '';
    return this.bound.family === 'IPv6' ? `[${this.bound.address}]:${this.bound.port}` : `${this.bound.address}:${this.bound.port}`;
  }

  get port(): number {
    return this.bound?.port ?? 0;
  }

  /** Connections open now (waiting for an upstream or proxied). */
  get openConnections(): number {
    return this.sessions.size + this.connecting.size;
  }

  /** Bytes the listener's sessions hold in user space right now. */
  bufferedBytes(): number {
    let n = 0;
    for (const s of this.sessions) n += s.bufferedBytes();
    return n;
  }

  snapshot(): ListenerSnapshot {
    return { name: this.name, address: this.addressText, cluster: this.config.cluster, stats: { ...this.stats, closes: { ...this.stats.closes } } };
  }

  private async onConnection(sock: Socket): Promise<void> {
    this.stats.total++;
    this.stats.active++;
    sock.setNoDelay(true);
    // Until a session owns it; the session adds its own handler.
    sock.on('error', () => {});
    const cfg = this.config;
    const cluster = this.clusterFor(cfg.cluster);
    if (!cluster || !this.accepting) {
      sock.destroy();
      this.recordClose(cluster ? 'downstream_aborted' : 'no_healthy_upstream');
      return;
    }
    const ac = new AbortController();
    this.connecting.set(sock, ac);
    const early: Buffer[] = [];
    let earlyBytes = 0;
    let earlyEnd = false;
    const onEarlyData = (d: Buffer) => {
      early.push(d);
      earlyBytes += d.length;
      if (earlyBytes >= PRECONNECT_BUFFER_BYTES) sock.pause();
    };
    const onEarlyEnd = () => (earlyEnd = true);
    const onEarlyClose = () => ac.abort();
    sock.on('data', onEarlyData);
    sock.once('end', onEarlyEnd);
    sock.once('close', onEarlyClose);
    sock.resume();
    let result;
    try {
      result = await cluster.open(clientHashKey(sock), ac.signal);
    } finally {
      this.connecting.delete(sock);
      // Paused before the listener goes, so no byte is emitted to nobody.
      sock.pause();
      sock.off('data', onEarlyData);
      sock.off('end', onEarlyEnd);
      sock.off('close', onEarlyClose);
    }
    switch (result.kind) {
      case 'connected': {
        if (sock.destroyed || ac.signal.aborted) {
          result.sock.destroy();
          cluster.release(result.endpoint);
          this.recordClose('downstream_aborted');
          return;
        }
        const opts = {
          idleTimeoutMs: cfg.idle_timeout_ms,
          early,
          earlyEnd,
          onClose: (s: ProxySession | LinkedSession, reason: CloseReason) => {
            this.sessions.delete(s);
            cluster.release(s.endpoint);
            this.recordClose(reason);
          },
        };
        const session = result.sock instanceof LinkableUpstream ? new LinkedSession(sock, result.sock, result.endpoint, opts) : new ProxySession(sock, result.sock, result.endpoint, opts);
        this.sessions.add(session);
        return;
      }
      case 'overflow':
        // Closed at once: the circuit breaker's whole point is not to queue.
        sock.destroy();
        this.recordClose(result.limit === 'connections' ? 'overflow_connections' : 'overflow_pending');
        return;
      case 'no_upstream':
        sock.destroy();
        this.recordClose('no_healthy_upstream');
        return;
      case 'failed':
        trace(`${this.name}: every connect attempt failed: ${result.error.message}`);
        sock.destroy();
        this.recordClose('connect_failed');
        return;
      case 'aborted':
        sock.destroy();
        this.recordClose(this.closingAll ? 'shutdown' : 'downstream_aborted');
        return;
    }
  }

  private recordClose(reason: CloseReason): void {
    this.stats.active--;
    this.stats.closes[reason]++;
  }

  /** Stop accepting; open connections keep running. Idempotent. */
  stopAccepting(): void {
    if (!this.accepting && !this.server.listening) return;
    this.accepting = false;
    if (this.server.listening) this.server.close();
    trace(`${this.name}: stopped accepting on ${this.addressText}`);
  }

  /** Abort every connection of this listener (waiting and proxied) with `reason`. */
  closeConnections(reason: CloseReason): void {
    this.closingAll = true;
    for (const ac of this.connecting.values()) ac.abort();
    for (const s of [...this.sessions]) s.close(reason);
  }

  /** Resolves once no connection of this listener is open, or after `ms` (false then). */
  async drained(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.openConnections > 0) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, deadline - Date.now()))));
    }
    return true;
  }
}
