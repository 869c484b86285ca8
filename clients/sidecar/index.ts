/**
 * The sockgate load-balancer sidecar: an L4 load balancer beside an app whose
 * upstream connections ride a sockgate gateway.
 *
 * ```ts
 * import { Sidecar } from 'sockgate/sidecar';
 * const sidecar = new Sidecar({ configPath: '/etc/sockgate/sidecar.yaml', createTelemetry });
 * await sidecar.start();
 * // ... sidecar.reload() on SIGHUP, sidecar.close() on SIGTERM
 * ```
 */
export { Sidecar, type SidecarOptions, type SidecarStatus, type ReloadEvent, type SidecarTelemetry, type SidecarTelemetryFactory } from './sidecar.js';
export {
  sidecarConfigSchema,
  loadSidecarConfig,
  parseSidecarConfig,
  validateSidecarConfig,
  parseListenerAddress,
  payloadBytes,
  DEFAULT_LISTENER_HOST,
  DEFAULT_MAGLEV_TABLE_SIZE,
  type SidecarConfig,
  type ListenerConfig,
  type ClusterConfig,
  type HealthCheckConfig,
  type OutlierConfig,
  type CircuitBreakerConfig,
  type DnsConfig,
  type LbPolicy,
} from './sidecar-config.js';
export { Cluster, classifyConnectError, systemResolver, type OpenResult, type ClusterStats, type ClusterSnapshot, type Resolver } from './cluster.js';
export { Endpoint, type HealthState, type EndpointStats, type EndpointSnapshot, type ConnectFailureReason } from './endpoint.js';
export { Listener, clientHashKey, type ListenerStats, type ListenerSnapshot } from './listener.js';
export { ProxySession, CLOSE_REASONS, type CloseReason } from './proxy-session.js';
export { createLoadBalancer, RoundRobinLoadBalancer, LeastConnectionsLoadBalancer, type LoadBalancer, type PickContext } from './lb.js';
export { MaglevTable, MaglevLoadBalancer, hash32 } from './lb-maglev.js';
export { HealthChecker } from './health-check.js';
export { OutlierDetector } from './outlier.js';
export { GatewayLink, type UpstreamDialer, type DialOptions } from './gateway-link.js';
export { SIDECAR_METRICS, SIDECAR_LABEL, registerSidecarMetrics } from './sidecar-metrics.js';
export { registerSidecarCommand, runSidecar, SIDECAR_EXIT_CODES } from './cli.js';
