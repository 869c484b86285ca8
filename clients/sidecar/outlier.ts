/**
 * Passive outlier detection for one cluster, after Envoy's
 * `consecutive_gateway_failure` rule for TCP: an endpoint whose upstream
 * connects fail `consecutive_failures` times in a row is ejected. The n-th
 * ejection lasts n × `base_ejection_ms`, capped at `max_ejection_ms`; the
 * multiplier n drops by one for every `base_ejection_ms` the endpoint then
 * spends un-ejected. At most `max_ejection_percent` of the endpoints are
 * ejected at once, but always at least one may be. A passing active health
 * check ends an ejection early (Envoy's `successful_active_health_check_uneject_host`).
 */
import { tracer } from '../../native/trace.js';
import type { Endpoint } from './endpoint.js';
import type { OutlierConfig } from './sidecar-config.js';

const TRACER = 'sidecar_outlier';
const trace = tracer(TRACER);

export interface OutlierEvents {
  onEject(ep: Endpoint, durationMs: number): void;
  onUneject(ep: Endpoint, reason: string): void;
}

export class OutlierDetector {
  /** Un-ejection timer per ejected endpoint. */
  private readonly timers = new Map<Endpoint, NodeJS.Timeout>();

  /**
   * @param config the cluster's outlier_detection section; undefined disables ejection
   * @param endpoints the cluster's current (non-removed) endpoints, for the ejection cap
   */
  constructor(
    private config: OutlierConfig | undefined,
    private readonly endpoints: () => readonly Endpoint[],
    private readonly events: OutlierEvents,
    private readonly now: () => number = Date.now,
  ) {}

  update(config: OutlierConfig | undefined): void {
    this.config = config;
    if (!config) for (const ep of [...this.timers.keys()]) this.uneject(ep, 'outlier detection disabled');
  }

  /** A connect to `ep` succeeded. */
  onSuccess(ep: Endpoint): void {
    ep.consecutiveFailures = 0;
  }

  /** A connect to `ep` failed in a way that is the endpoint's fault. Returns true if this ejected it. */
  onFailure(ep: Endpoint): boolean {
    ep.consecutiveFailures++;
    const cfg = this.config;
    if (!cfg || ep.ejected || ep.removed || ep.consecutiveFailures < cfg.consecutive_failures) return false;
    if (!this.mayEject()) {
      trace(`${ep.cluster} ${ep.uri}: would eject, but max_ejection_percent (${cfg.max_ejection_percent}) is reached`);
      return false;
    }
    this.eject(ep, cfg);
    return true;
  }

  /** Whether one more endpoint may be ejected under max_ejection_percent (at least one always may). */
  private mayEject(): boolean {
    const eps = this.endpoints();
    const ejected = eps.filter((e) => e.ejected).length;
    const cap = Math.max(1, Math.floor((eps.length * (this.config?.max_ejection_percent ?? 100)) / 100));
    return ejected < cap;
  }

  /** The length of the next ejection of `ep`, after decaying its multiplier. Exposed for tests. */
  nextEjectionMs(ep: Endpoint, cfg: OutlierConfig): number {
    const now = this.now();
    if (ep.ejectionLevel > 0 && ep.lastUnejectedAt > 0) {
      const decay = Math.floor((now - ep.lastUnejectedAt) / cfg.base_ejection_ms);
      ep.ejectionLevel = Math.max(0, ep.ejectionLevel - decay);
    }
    return Math.min(cfg.base_ejection_ms * (ep.ejectionLevel + 1), cfg.max_ejection_ms);
  }

  private eject(ep: Endpoint, cfg: OutlierConfig): void {
    const ms = this.nextEjectionMs(ep, cfg);
    ep.ejectionLevel++;
    ep.setEjected(this.now() + ms, ms);
    const timer = setTimeout(() => this.uneject(ep, `ejection of ${ms} ms over`), ms);
    timer.unref();
    this.timers.set(ep, timer);
    this.events.onEject(ep, ms);
  }

  /** End `ep`'s ejection now (timer, passing health check, removal). */
  uneject(ep: Endpoint, reason: string): void {
    clearTimeout(this.timers.get(ep));
    this.timers.delete(ep);
    if (!ep.ejected) return;
    ep.clearEjected(this.now(), reason);
    this.events.onUneject(ep, reason);
  }

  /** Drop `ep` (removed from the cluster): its timer goes. */
  forget(ep: Endpoint): void {
    clearTimeout(this.timers.get(ep));
    this.timers.delete(ep);
  }

  stop(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
