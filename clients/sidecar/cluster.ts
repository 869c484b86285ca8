/**
 * A cluster: a named set of upstream endpoints (static, or from a DNS name
 * re-resolved on a timer), a load-balancing policy, active health checks,
 * passive outlier detection, circuit breakers, and the connect loop (timeout,
 * retry on another endpoint). The cluster owns its endpoints, checker and
 * detector; it borrows the dialer from the sidecar.
 *
 * A reload updates a cluster in place: endpoints that stay keep their state
 * and counters, new ones join (after their first passing health check when
 * checks are configured), removed ones take no new connections but keep the
 * ones they have until those close.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../native/log.js';
import {
  AbortedError,
  AttachFailedError,
  ConnectionResetError,
  ConnectRefusedError,
  ConnectTimeoutError,
  DnsError,
  GatewayUnavailableError,
  HostUnreachableError,
  LimitExceededError,
  NoTransportError,
  PolicyDeniedError,
  ShuttingDownError,
  UnauthenticatedError,
} from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import { Endpoint, type ConnectFailureReason, type EndpointSnapshot } from './endpoint.js';
import type { UpstreamDialer } from './gateway-link.js';
import { HealthChecker } from './health-check.js';
import { createLoadBalancer, type LoadBalancer } from './lb.js';
import { OutlierDetector } from './outlier.js';
import type { ClusterConfig, DnsConfig } from './sidecar-config.js';

const TRACER = 'sidecar_cluster';
const trace = tracer(TRACER);

/** Resolves a host name to addresses; the default uses the system resolver (getaddrinfo). */
export type Resolver = (name: string, family: 0 | 4 | 6) => Promise<string[]>;

export const systemResolver: Resolver = async (name, family) => {
  const res = await lookup(name, { all: true, family });
  return res.map((r) => r.address);
};

/** What happened to one attempt to open an upstream for a downstream connection. A closed set. */
export type OpenResult =
  | { kind: 'connected'; sock: Duplex; endpoint: Endpoint }
  /** A circuit breaker is open: too many connections or too many waiting. */
  | { kind: 'overflow'; limit: 'connections' | 'pending' }
  /** No endpoint to try (none configured, resolved, or available). */
  | { kind: 'no_upstream' }
  /** Every attempt failed; `error` is the last one's. */
  | { kind: 'failed'; error: Error }
  /** The downstream went away (or the sidecar stopped) while connecting. */
  | { kind: 'aborted' };

/** Cluster-wide counters and gauges, read by metrics at scrape time. */
export interface ClusterStats {
  /** Proxied connections open now. */
  active: number;
  /** Downstream connections waiting for an upstream connection. */
  pending: number;
  /** Upstream connections established. */
  total: number;
  /** Connect attempts that failed. */
  connectFailures: number;
  /** Connections that succeeded only after a failed attempt. */
  retriesSucceeded: number;
  /** Downstream connections refused by a circuit breaker. */
  overflow: { connections: number; pending: number };
  /** Downstream connections closed because no endpoint could be tried. */
  noHealthyUpstream: number;
  /** Picks made in panic mode (too few endpoints available, so all were used). */
  panicPicks: number;
}

export interface ClusterSnapshot {
  name: string;
  policy: string;
  stats: ClusterStats;
  endpoints: EndpointSnapshot[];
}

/** What a cluster tells the sidecar (for logs and events). */
export interface ClusterEvents {
  onEndpointChange(cluster: Cluster, ep: Endpoint, what: string): void;
  onEndpointsChanged(cluster: Cluster, added: readonly string[], removed: readonly string[]): void;
  onResolveError(cluster: Cluster, err: Error): void;
}

/** The failure's metric label, and whether it counts against the endpoint for outlier detection. */
export function classifyConnectError(err: unknown): { reason: ConnectFailureReason; endpointFault: boolean } {
  if (err instanceof ConnectRefusedError) return { reason: 'refused', endpointFault: true };
  if (err instanceof ConnectTimeoutError) return { reason: 'timeout', endpointFault: true };
  if (err instanceof HostUnreachableError) return { reason: 'unreachable', endpointFault: true };
  if (err instanceof DnsError) return { reason: 'dns', endpointFault: true };
  if (err instanceof ConnectionResetError) return { reason: 'reset', endpointFault: true };
  // The way to the gateway failed, not the endpoint: no ejection for that.
  if (err instanceof GatewayUnavailableError || err instanceof AttachFailedError || err instanceof NoTransportError || err instanceof ShuttingDownError) {
    return { reason: 'gateway', endpointFault: false };
  }
  if (err instanceof PolicyDeniedError || err instanceof UnauthenticatedError) return { reason: 'denied', endpointFault: false };
  if (err instanceof LimitExceededError) return { reason: 'limit', endpointFault: false };
  return { reason: 'error', endpointFault: true };
}

function uriFor(address: string, port: number): string {
  return isIP(address) === 6 ? `tcp://[${address}]:${port}` : `tcp://${address}:${port}`;
}

export class Cluster {
  readonly name: string;
  readonly stats: ClusterStats = {
    active: 0,
    pending: 0,
    total: 0,
    connectFailures: 0,
    retriesSucceeded: 0,
    overflow: { connections: 0, pending: 0 },
    noHealthyUpstream: 0,
    panicPicks: 0,
  };

  private config: ClusterConfig;
  /** Current endpoints by key; removed ones move to `retired`. */
  private readonly endpoints = new Map<string, Endpoint>();
  /** Removed endpoints that still carry connections; dropped when their last one closes. */
  private readonly retired = new Set<Endpoint>();
  private lb: LoadBalancer;
  private checker: HealthChecker | undefined;
  private readonly outlier: OutlierDetector;
  /** The pick candidates, recomputed when an endpoint's availability changed. */
  private candidates: Endpoint[] = [];
  private panic = false;
  private dirty = true;
  /** Re-resolution timer of a DNS cluster. */
  private dnsTimer: NodeJS.Timeout | undefined;
  /** Bumped on every DNS config change and on stop, so stale answers are ignored. */
  private dnsGeneration = 0;
  /** The DNS settings the running resolver loop uses. */
  private dnsConfig: DnsConfig | undefined;
  private stopped = false;

  constructor(
    config: ClusterConfig,
    private readonly dialer: UpstreamDialer,
    private readonly logger: Logger,
    private readonly events: ClusterEvents,
    private readonly resolver: Resolver = systemResolver,
  ) {
    this.name = config.name;
    this.config = config;
    this.lb = createLoadBalancer(config.lb_policy, config.maglev.table_size);
    this.outlier = new OutlierDetector(config.outlier_detection, () => [...this.endpoints.values()], {
      onEject: (ep, ms) => this.logger.warn({ cluster: this.name, endpoint: ep.uri, ejection_ms: ms, failures: ep.consecutiveFailures }, 'endpoint ejected after consecutive connect failures'),
      onUneject: (ep, reason) => this.logger.info({ cluster: this.name, endpoint: ep.uri, reason }, 'endpoint back from ejection'),
    });
    if (config.health_check) this.checker = this.makeChecker(config);
    if (config.endpoints) this.setEndpoints(config.endpoints);
  }

  /** Resolve DNS and run the first round of health checks, each bounded by its timeout; then traffic may flow. */
  async start(): Promise<void> {
    if (this.config.dns) await this.startDns(this.config.dns);
    await this.checker?.checkAll();
  }

  get policy(): string {
    return this.lb.policy;
  }

  /** Current endpoints (not removed ones). */
  endpointList(): Endpoint[] {
    return [...this.endpoints.values()];
  }

  endpoint(uri: string): Endpoint | undefined {
    return this.endpoints.get(uri);
  }

  /** Current and retired-but-busy endpoints (what metrics report). */
  allEndpoints(): Endpoint[] {
    return [...this.endpoints.values(), ...this.retired];
  }

  snapshot(): ClusterSnapshot {
    return {
      name: this.name,
      policy: this.lb.policy,
      stats: { ...this.stats, overflow: { ...this.stats.overflow } },
      endpoints: this.allEndpoints().map((e) => e.snapshot()),
    };
  }

  private makeChecker(config: ClusterConfig): HealthChecker {
    return new HealthChecker(config.health_check!, this.dialer, {
      onResult: (ep, passed) => {
        // A passing active check ends an ejection early (Envoy's default).
        if (passed && ep.ejected) this.outlier.uneject(ep, 'active health check passed');
      },
    });
  }

  private onEndpointChange = (ep: Endpoint, what: string): void => {
    this.dirty = true;
    this.events.onEndpointChange(this, ep, what);
  };

  /** Make the endpoint set exactly `uris`. */
  private setEndpoints(uris: readonly string[]): void {
    const want = new Set(uris);
    const added: string[] = [];
    const removed: string[] = [];
    for (const [key, ep] of this.endpoints) {
      if (want.has(key)) continue;
      this.endpoints.delete(key);
      ep.removed = true;
      this.checker?.remove(ep);
      this.outlier.forget(ep);
      if (ep.stats.active > 0 || ep.stats.pending > 0) this.retired.add(ep);
      removed.push(key);
    }
    for (const uri of uris) {
      if (this.endpoints.has(uri)) continue;
      const ep = new Endpoint(uri, this.name, this.checker !== undefined, this.onEndpointChange);
      this.endpoints.set(uri, ep);
      this.checker?.add(ep);
      added.push(uri);
    }
    if (added.length || removed.length) {
      this.dirty = true;
      trace(`${this.name}: endpoints +[${added.join(', ')}] -[${removed.join(', ')}]`);
      this.events.onEndpointsChanged(this, added, removed);
    }
  }

  /** Apply a reloaded config to this cluster (same name). */
  async update(next: ClusterConfig): Promise<void> {
    const prev = this.config;
    this.config = next;
    if (next.lb_policy !== prev.lb_policy || next.maglev.table_size !== prev.maglev.table_size) {
      this.lb = createLoadBalancer(next.lb_policy, next.maglev.table_size);
      this.dirty = true;
    }
    if (next.health_check && this.checker) {
      this.checker.update(next.health_check);
    } else if (next.health_check) {
      // Checks added: endpoints keep serving until checks say otherwise.
      this.checker = this.makeChecker(next);
      for (const ep of this.endpoints.values()) this.checker.add(ep);
    } else if (this.checker) {
      this.checker.stop();
      this.checker = undefined;
      for (const ep of this.endpoints.values()) ep.transitionTo(['unknown', 'unhealthy'], 'healthy', 'health checks removed from the config');
    }
    this.outlier.update(next.outlier_detection);
    if (next.endpoints) {
      this.stopDns();
      this.setEndpoints(next.endpoints);
    } else if (next.dns && JSON.stringify(next.dns) !== JSON.stringify(this.dnsConfig)) {
      await this.startDns(next.dns);
    }
    this.dirty = true;
  }

  // -------------------------------------------------------------------------
  // DNS

  private async startDns(dns: DnsConfig): Promise<void> {
    this.stopDns();
    this.dnsConfig = dns;
    const generation = ++this.dnsGeneration;
    await this.resolveOnce(dns, generation);
    this.scheduleResolve(dns, generation);
  }

  private stopDns(): void {
    this.dnsGeneration++;
    this.dnsConfig = undefined;
    clearTimeout(this.dnsTimer);
    this.dnsTimer = undefined;
  }

  private scheduleResolve(dns: DnsConfig, generation: number): void {
    if (generation !== this.dnsGeneration || this.stopped) return;
    this.dnsTimer = setTimeout(() => {
      void this.resolveOnce(dns, generation).then(() => this.scheduleResolve(dns, generation));
    }, dns.refresh_ms);
    this.dnsTimer.unref();
  }

  /** Resolve once and follow the answer; on an error or empty answer, keep the last good set. */
  private async resolveOnce(dns: DnsConfig, generation: number): Promise<void> {
    let addrs: string[];
    try {
      addrs = await this.resolver(dns.name, dns.family);
      if (addrs.length === 0) throw new DnsError(`${dns.name}: no addresses`);
    } catch (err) {
      if (generation === this.dnsGeneration) this.events.onResolveError(this, err as Error);
      return;
    }
    if (generation !== this.dnsGeneration || this.stopped) return;
    this.setEndpoints([...new Set(addrs.map((a) => uriFor(a, dns.port)))].sort());
  }

  // -------------------------------------------------------------------------
  // Picking and connecting

  /** The endpoints a pick chooses from: the available ones, or all of them in panic mode. */
  private currentCandidates(): Endpoint[] {
    if (this.dirty) {
      this.dirty = false;
      const all = [...this.endpoints.values()];
      const available = all.filter((e) => e.available);
      const threshold = this.config.healthy_panic_threshold;
      this.panic = all.length > 0 && threshold > 0 && available.length * 100 < all.length * threshold;
      if (this.panic) trace(`${this.name}: panic mode: ${available.length} of ${all.length} endpoints available`);
      this.candidates = this.panic ? all : available;
    }
    return this.candidates;
  }

  /** Pick for `hashKey`, preferring endpoints not yet tried; a retry repeats one only when none is left. */
  pick(hashKey: string, tried: ReadonlySet<Endpoint> = new Set()): Endpoint | undefined {
    const candidates = this.currentCandidates();
    if (this.panic) this.stats.panicPicks++;
    return this.lb.pick(candidates, { hashKey, exclude: tried }) ?? (tried.size ? this.lb.pick(candidates, { hashKey }) : undefined);
  }

  /**
   * Open an upstream for one downstream connection: circuit breakers first,
   * then up to 1 + `retries` attempts, each bounded by `connect_timeout_ms`.
   * On success the connection counts as active until `release()`.
   */
  async open(hashKey: string, signal: AbortSignal): Promise<OpenResult> {
    const cb = this.config.circuit_breakers;
    if (this.stats.pending >= cb.max_pending) {
      this.stats.overflow.pending++;
      return { kind: 'overflow', limit: 'pending' };
    }
    if (this.stats.active + this.stats.pending >= cb.max_connections) {
      this.stats.overflow.connections++;
      return { kind: 'overflow', limit: 'connections' };
    }
    this.stats.pending++;
    try {
      const tried = new Set<Endpoint>();
      let lastError: Error | undefined;
      const attempts = 1 + this.config.retries;
      for (let attempt = 0; attempt < attempts; attempt++) {
        if (signal.aborted || this.stopped) return { kind: 'aborted' };
        const ep = this.pick(hashKey, tried);
        if (!ep) break;
        tried.add(ep);
        try {
          const sock = await this.attempt(ep, signal);
          this.outlier.onSuccess(ep);
          ep.stats.total++;
          ep.stats.active++;
          if (ep.removed) this.retired.add(ep);
          this.stats.total++;
          this.stats.active++;
          if (attempt > 0) this.stats.retriesSucceeded++;
          return { kind: 'connected', sock, endpoint: ep };
        } catch (err) {
          if (signal.aborted || err instanceof AbortedError) return { kind: 'aborted' };
          lastError = err as Error;
          const { reason, endpointFault } = classifyConnectError(err);
          ep.stats.connectFailures[reason]++;
          this.stats.connectFailures++;
          trace(`${this.name}: connect to ${ep.uri} failed (${reason}): ${lastError.message}`);
          if (endpointFault) this.outlier.onFailure(ep);
        }
      }
      if (!lastError) {
        this.stats.noHealthyUpstream++;
        return { kind: 'no_upstream' };
      }
      return { kind: 'failed', error: lastError };
    } finally {
      this.stats.pending--;
    }
  }

  /** One connect attempt to `ep`, bounded by connect_timeout_ms (a timeout rejects with ConnectTimeoutError). */
  private async attempt(ep: Endpoint, signal: AbortSignal): Promise<Duplex> {
    const timeoutMs = this.config.connect_timeout_ms;
    const ac = new AbortController();
    let timedOut = false;
    const onAbort = () => ac.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    ep.stats.attempts++;
    ep.stats.pending++;
    try {
      // Proxied traffic is linked natively where the dialer can (see linked-session.ts).
      const opts = { timeoutMs, signal: ac.signal };
      const sock = await (this.dialer.dialForLink ? this.dialer.dialForLink(ep.uri, opts) : this.dialer.dial(ep.uri, opts));
      if (ac.signal.aborted) {
        // Connected just as the timer fired or the downstream left: too late.
        sock.destroy();
        throw timedOut ? new ConnectTimeoutError(`connect to ${ep.uri}: no connection within ${timeoutMs} ms`) : new AbortedError('downstream closed while connecting');
      }
      return sock;
    } catch (err) {
      if (timedOut && !(err instanceof ConnectTimeoutError)) {
        throw new ConnectTimeoutError(`connect to ${ep.uri}: no connection within ${timeoutMs} ms`, { cause: err });
      }
      throw err;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      ep.stats.pending--;
      if (ep.removed && ep.stats.active === 0 && ep.stats.pending === 0) this.retired.delete(ep);
    }
  }

  /** A proxied connection to `ep` closed. */
  release(ep: Endpoint): void {
    ep.stats.active--;
    this.stats.active--;
    if (ep.removed && ep.stats.active === 0 && ep.stats.pending === 0) this.retired.delete(ep);
  }

  /** Stop checks, timers and resolution (removed from the config, or shutdown); open connections are not touched. */
  stop(): void {
    this.stopped = true;
    this.stopDns();
    this.checker?.stop();
    this.outlier.stop();
  }
}
