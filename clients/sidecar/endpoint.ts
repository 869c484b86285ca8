/**
 * One upstream endpoint of a cluster: its address, its two independent
 * verdicts (active health: healthy/unhealthy/unknown; passive outlier
 * detection: ejected or not) and its counters. The cluster owns endpoints; the
 * health checker and the outlier detector change their state only through the
 * methods here, each of which reports availability changes to the cluster.
 */
import { tracer } from '../../native/trace.js';

const TRACER = 'sidecar_endpoint';
const trace = tracer(TRACER);

/** Active health of an endpoint. `unknown`: checks are configured but none has passed yet. */
export type HealthState = 'unknown' | 'healthy' | 'unhealthy';

/** Why an upstream connect failed, as counted in metrics. A closed set. */
export type ConnectFailureReason = 'refused' | 'timeout' | 'unreachable' | 'dns' | 'reset' | 'gateway' | 'denied' | 'limit' | 'error';

export const CONNECT_FAILURE_REASONS: readonly ConnectFailureReason[] = ['refused', 'timeout', 'unreachable', 'dns', 'reset', 'gateway', 'denied', 'limit', 'error'];

/** Cumulative counters (monotonic) and gauges of one endpoint, read by metrics at scrape time. */
export interface EndpointStats {
  /** Proxied connections open now. */
  active: number;
  /** Connect attempts in flight. */
  pending: number;
  /** Connect attempts started (successful or not). */
  attempts: number;
  /** Upstream connections established. */
  total: number;
  /** Bytes received from the endpoint. */
  bytesIn: number;
  /** Bytes sent to the endpoint. */
  bytesOut: number;
  connectFailures: Record<ConnectFailureReason, number>;
  ejections: number;
  healthChecksPassed: number;
  healthChecksFailed: number;
}

/** A point-in-time view of an endpoint, for status output and tests. */
export interface EndpointSnapshot {
  uri: string;
  health: HealthState;
  ejected: boolean;
  /** Length of the current (or last) ejection in ms. */
  lastEjectionMs: number;
  available: boolean;
  /** Removed from the cluster by a reload; kept while its connections drain. */
  removed: boolean;
  stats: EndpointStats;
}

export class Endpoint {
  /** Stable identity within a cluster: the endpoint URI, e.g. tcp://10.0.0.1:5432. */
  readonly key: string;
  readonly stats: EndpointStats = {
    active: 0,
    pending: 0,
    attempts: 0,
    total: 0,
    bytesIn: 0,
    bytesOut: 0,
    connectFailures: Object.fromEntries(CONNECT_FAILURE_REASONS.map((r) => [r, 0])) as Record<ConnectFailureReason, number>,
    ejections: 0,
    healthChecksPassed: 0,
    healthChecksFailed: 0,
  };

  /** Active health; always `healthy` while the cluster has no health check. */
  private healthState: HealthState;
  /** True from ejection until un-ejection; independent of health. */
  private ejectedFlag = false;
  /** Connect failures since the last success (outlier detection input). */
  consecutiveFailures = 0;
  /** Health-check results since the last opposite result (threshold input). */
  consecutiveChecksPassed = 0;
  consecutiveChecksFailed = 0;
  /** Ejection multiplier: the n-th ejection lasts n × base (decays while the endpoint behaves). */
  ejectionLevel = 0;
  /** When the current ejection ends (ms since epoch); 0 when not ejected. */
  ejectedUntil = 0;
  /** When the endpoint was last un-ejected (ms since epoch), for the multiplier's decay. */
  lastUnejectedAt = 0;
  lastEjectionMs = 0;
  /** Set once a reload removes the endpoint; it then takes no new connections. */
  removed = false;

  /**
   * @param uri the endpoint, tcp://host:port
   * @param cluster the owning cluster's name (for traces and logs)
   * @param activelyChecked whether health checks decide `health` (starts `unknown`) or not (always `healthy`)
   * @param onChange called whenever `available` may have changed
   */
  constructor(
    readonly uri: string,
    readonly cluster: string,
    activelyChecked: boolean,
    private readonly onChange: (ep: Endpoint, what: string) => void,
  ) {
    this.key = uri;
    this.healthState = activelyChecked ? 'unknown' : 'healthy';
  }

  get health(): HealthState {
    return this.healthState;
  }

  get ejected(): boolean {
    return this.ejectedFlag;
  }

  /** Whether new connections may go here (panic mode aside). */
  get available(): boolean {
    return !this.removed && this.healthState === 'healthy' && !this.ejectedFlag;
  }

  /**
   * The one way health changes: from one of `allowedFrom` to `to`, traced.
   * Returns false (and changes nothing) from any other state.
   */
  transitionTo(allowedFrom: readonly HealthState[], to: HealthState, reason: string): boolean {
    const from = this.healthState;
    if (from === to || !allowedFrom.includes(from)) return false;
    this.healthState = to;
    trace(`${this.cluster} ${this.uri}: ${from} -> ${to} (${reason})`);
    this.onChange(this, `health ${from} -> ${to}: ${reason}`);
    return true;
  }

  /** Mark ejected (the outlier detector decides when and for how long). */
  setEjected(until: number, durationMs: number): void {
    if (this.ejectedFlag) return;
    this.ejectedFlag = true;
    this.ejectedUntil = until;
    this.lastEjectionMs = durationMs;
    this.stats.ejections++;
    trace(`${this.cluster} ${this.uri}: ejected for ${durationMs} ms (level ${this.ejectionLevel})`);
    this.onChange(this, `ejected for ${durationMs} ms`);
  }

  /** End an ejection. */
  clearEjected(now: number, reason: string): void {
    if (!this.ejectedFlag) return;
    this.ejectedFlag = false;
    this.ejectedUntil = 0;
    this.lastUnejectedAt = now;
    this.consecutiveFailures = 0;
    trace(`${this.cluster} ${this.uri}: un-ejected (${reason})`);
    this.onChange(this, `un-ejected: ${reason}`);
  }

  snapshot(): EndpointSnapshot {
    return {
      uri: this.uri,
      health: this.healthState,
      ejected: this.ejectedFlag,
      lastEjectionMs: this.lastEjectionMs,
      available: this.available,
      removed: this.removed,
      stats: { ...this.stats, connectFailures: { ...this.stats.connectFailures } },
    };
  }
}
