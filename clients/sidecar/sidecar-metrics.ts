/**
 * The sidecar's metrics, declared once in one table and served on the same
 * Prometheus endpoint as the rest of sockgate's telemetry (server/telemetry.ts).
 * As there, the hot path never touches an instrument: every value is a plain
 * counter on a listener, cluster or endpoint, read by one batch callback at
 * scrape time.
 *
 * In the Prometheus exposition `.` becomes `_` and counters gain `_total`:
 * `sockgate_sidecar_endpoint_connections_total{cluster,endpoint}`,
 * `sockgate_sidecar_endpoint_healthy{cluster,endpoint}` (a gauge), ...
 */
import type { Attributes, Meter, Observable } from '@opentelemetry/api';
import { CONNECT_FAILURE_REASONS } from './endpoint.js';
import type { Cluster } from './cluster.js';
import type { Listener } from './listener.js';
import { CLOSE_REASONS } from './proxy-session.js';

type Kind = 'observableCounter' | 'observableGauge';

interface Spec {
  readonly name: string;
  readonly kind: Kind;
  readonly description: string;
  readonly unit: string;
}

/** Label keys of the sidecar's series. */
export const SIDECAR_LABEL = {
  LISTENER: 'listener',
  CLUSTER: 'cluster',
  ENDPOINT: 'endpoint',
  REASON: 'reason',
  LIMIT: 'limit',
  DIRECTION: 'direction',
  RESULT: 'result',
} as const;

/** Every sidecar metric, declared once. */
export const SIDECAR_METRICS = {
  listenerConnections: { name: 'sockgate.sidecar.listener.connections', kind: 'observableCounter', description: 'Downstream connections accepted, by listener', unit: '{connection}' },
  listenerActive: { name: 'sockgate.sidecar.listener.connections.active', kind: 'observableGauge', description: 'Downstream connections open, by listener', unit: '{connection}' },
  listenerCloses: { name: 'sockgate.sidecar.listener.closes', kind: 'observableCounter', description: 'Downstream connections ended, by listener and close reason', unit: '{connection}' },
  clusterConnections: { name: 'sockgate.sidecar.cluster.connections', kind: 'observableCounter', description: 'Upstream connections established, by cluster', unit: '{connection}' },
  clusterActive: { name: 'sockgate.sidecar.cluster.connections.active', kind: 'observableGauge', description: 'Proxied connections open, by cluster', unit: '{connection}' },
  clusterPending: { name: 'sockgate.sidecar.cluster.pending', kind: 'observableGauge', description: 'Downstream connections waiting for an upstream, by cluster', unit: '{connection}' },
  clusterOverflows: { name: 'sockgate.sidecar.cluster.overflows', kind: 'observableCounter', description: 'Downstream connections refused by a circuit breaker, by cluster and limit', unit: '{connection}' },
  clusterConnectFailures: { name: 'sockgate.sidecar.cluster.connect_failures', kind: 'observableCounter', description: 'Failed upstream connect attempts, by cluster', unit: '{attempt}' },
  clusterRetriesSucceeded: { name: 'sockgate.sidecar.cluster.retries_succeeded', kind: 'observableCounter', description: 'Connections established only after a failed attempt, by cluster', unit: '{connection}' },
  clusterNoHealthyUpstream: { name: 'sockgate.sidecar.cluster.no_healthy_upstream', kind: 'observableCounter', description: 'Downstream connections closed because no endpoint could be tried, by cluster', unit: '{connection}' },
  endpointConnections: { name: 'sockgate.sidecar.endpoint.connections', kind: 'observableCounter', description: 'Upstream connections established, by endpoint', unit: '{connection}' },
  endpointActive: { name: 'sockgate.sidecar.endpoint.connections.active', kind: 'observableGauge', description: 'Proxied connections open, by endpoint', unit: '{connection}' },
  endpointConnectFailures: { name: 'sockgate.sidecar.endpoint.connect_failures', kind: 'observableCounter', description: 'Failed upstream connect attempts, by endpoint and reason', unit: '{attempt}' },
  endpointEjections: { name: 'sockgate.sidecar.endpoint.ejections', kind: 'observableCounter', description: 'Outlier ejections, by endpoint', unit: '{ejection}' },
  endpointEjected: { name: 'sockgate.sidecar.endpoint.ejected', kind: 'observableGauge', description: '1 while the endpoint is ejected by outlier detection', unit: '1' },
  endpointHealthy: { name: 'sockgate.sidecar.endpoint.healthy', kind: 'observableGauge', description: '1 while active health checks (if any) find the endpoint healthy', unit: '1' },
  endpointHealthChecks: { name: 'sockgate.sidecar.endpoint.health_checks', kind: 'observableCounter', description: 'Active health checks, by endpoint and result', unit: '{check}' },
  endpointBytes: { name: 'sockgate.sidecar.endpoint.bytes', kind: 'observableCounter', description: 'Payload bytes by endpoint and direction (out: to the endpoint, in: from it)', unit: 'By' },
  reloads: { name: 'sockgate.sidecar.reloads', kind: 'observableCounter', description: 'Configuration reloads by result (ok, rejected)', unit: '{reload}' },
} as const satisfies Record<string, Spec>;

type MetricKey = keyof typeof SIDECAR_METRICS;

/** What the metrics read at scrape time. */
export interface SidecarMetricsSource {
  allListeners(): Iterable<Listener>;
  /** Current clusters and removed ones that still carry connections. */
  allClusters(): Iterable<Cluster>;
  readonly reloads: { ok: number; rejected: number };
}

/** Create the instruments on `meter` and one batch callback that reads `source`. */
export function registerSidecarMetrics(meter: Meter, source: SidecarMetricsSource): void {
  const inst = {} as Record<MetricKey, Observable>;
  for (const [key, spec] of Object.entries(SIDECAR_METRICS) as [MetricKey, Spec][]) {
    const opts = { description: spec.description, unit: spec.unit };
    inst[key] = spec.kind === 'observableCounter' ? meter.createObservableCounter(spec.name, opts) : meter.createObservableGauge(spec.name, opts);
  }
  const L = SIDECAR_LABEL;
  meter.addBatchObservableCallback((r) => {
    const obs = (k: MetricKey, v: number, a: Attributes) => r.observe(inst[k], v, a);
    for (const l of source.allListeners()) {
      const a = { [L.LISTENER]: l.name };
      obs('listenerConnections', l.stats.total, a);
      obs('listenerActive', l.stats.active, a);
      for (const reason of CLOSE_REASONS) {
        const n = l.stats.closes[reason];
        if (n > 0) obs('listenerCloses', n, { ...a, [L.REASON]: reason });
      }
    }
    for (const c of source.allClusters()) {
      const a = { [L.CLUSTER]: c.name };
      const s = c.stats;
      obs('clusterConnections', s.total, a);
      obs('clusterActive', s.active, a);
      obs('clusterPending', s.pending, a);
      obs('clusterOverflows', s.overflow.connections, { ...a, [L.LIMIT]: 'connections' });
      obs('clusterOverflows', s.overflow.pending, { ...a, [L.LIMIT]: 'pending' });
      obs('clusterConnectFailures', s.connectFailures, a);
      obs('clusterRetriesSucceeded', s.retriesSucceeded, a);
      obs('clusterNoHealthyUpstream', s.noHealthyUpstream, a);
      for (const ep of c.allEndpoints()) {
        const e = { ...a, [L.ENDPOINT]: ep.uri };
        const es = ep.stats;
        obs('endpointConnections', es.total, e);
        obs('endpointActive', es.active, e);
        for (const reason of CONNECT_FAILURE_REASONS) {
          const n = es.connectFailures[reason];
          if (n > 0) obs('endpointConnectFailures', n, { ...e, [L.REASON]: reason });
        }
        obs('endpointEjections', es.ejections, e);
        obs('endpointEjected', ep.ejected ? 1 : 0, e);
        obs('endpointHealthy', ep.health === 'healthy' ? 1 : 0, e);
        obs('endpointHealthChecks', es.healthChecksPassed, { ...e, [L.RESULT]: 'passed' });
        obs('endpointHealthChecks', es.healthChecksFailed, { ...e, [L.RESULT]: 'failed' });
        obs('endpointBytes', es.bytesOut, { ...e, [L.DIRECTION]: 'out' });
        obs('endpointBytes', es.bytesIn, { ...e, [L.DIRECTION]: 'in' });
      }
    }
    obs('reloads', source.reloads.ok, { [L.RESULT]: 'ok' });
    obs('reloads', source.reloads.rejected, { [L.RESULT]: 'rejected' });
  }, Object.values(inst));
}
