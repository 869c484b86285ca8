/**
 * Active health checks of one cluster's endpoints: a TCP connect through the
 * gateway (the same path as real traffic), optionally sending bytes and
 * expecting bytes back, every `interval_ms`, each check bounded by
 * `timeout_ms`. `unhealthy_threshold` consecutive failures mark an endpoint
 * unhealthy, `healthy_threshold` consecutive passes bring it back; a new
 * endpoint needs a single pass (as in Envoy).
 */
import type { Duplex } from 'node:stream';
import { tracer } from '../../native/trace.js';
import type { Endpoint } from './endpoint.js';
import type { UpstreamDialer } from './gateway-link.js';
import { payloadBytes, type HealthCheckConfig } from './sidecar-config.js';

const TRACER = 'sidecar_hc';
const trace = tracer(TRACER);

/** An endpoint that sends more than this without the expected bytes fails the check (bounded buffering). */
const MAX_EXPECT_SCAN_BYTES = 64 * 1024;

export interface HealthCheckEvents {
  /** After each check, once the endpoint's state is updated. */
  onResult(ep: Endpoint, passed: boolean, detail: string): void;
}

export class HealthChecker {
  /** Next scheduled check per endpoint; absent while a check runs or after remove(). */
  private readonly timers = new Map<Endpoint, NodeJS.Timeout>();
  /** Abort handle of the check running per endpoint. */
  private readonly running = new Map<Endpoint, AbortController>();
  /** Endpoints checked; membership decides whether a finished check reschedules. */
  private readonly endpoints = new Set<Endpoint>();
  private stopped = false;

  constructor(
    private config: HealthCheckConfig,
    private readonly dialer: UpstreamDialer,
    private readonly events: HealthCheckEvents,
  ) {}

  /** Start checking `ep`: the first check runs at once. */
  add(ep: Endpoint): void {
    if (this.stopped || this.endpoints.has(ep)) return;
    this.endpoints.add(ep);
    this.schedule(ep, 0);
  }

  /** Stop checking `ep` (a check in flight is aborted and not counted). */
  remove(ep: Endpoint): void {
    this.endpoints.delete(ep);
    clearTimeout(this.timers.get(ep));
    this.timers.delete(ep);
    this.running.get(ep)?.abort();
    this.running.delete(ep);
  }

  /** New settings; the next checks use them. */
  update(config: HealthCheckConfig): void {
    const intervalChanged = config.interval_ms !== this.config.interval_ms;
    this.config = config;
    if (!intervalChanged) return;
    for (const ep of this.timers.keys()) this.schedule(ep, config.interval_ms);
  }

  /** Run one check of every endpoint now (the cluster's warm-up) and resolve once all are recorded. */
  async checkAll(): Promise<void> {
    await Promise.all([...this.endpoints].map((ep) => this.check(ep)));
  }

  stop(): void {
    this.stopped = true;
    for (const ep of [...this.endpoints]) this.remove(ep);
  }

  private schedule(ep: Endpoint, delayMs: number): void {
    clearTimeout(this.timers.get(ep));
    const timer = setTimeout(() => {
      this.timers.delete(ep);
      void this.check(ep);
    }, delayMs);
    // Health checks alone do not keep a process alive; listeners do.
    timer.unref();
    this.timers.set(ep, timer);
  }

  /** One check of `ep` unless one is already running; records the result and schedules the next. */
  private async check(ep: Endpoint): Promise<void> {
    if (this.running.has(ep) || !this.endpoints.has(ep)) return;
    clearTimeout(this.timers.get(ep));
    this.timers.delete(ep);
    const ac = new AbortController();
    this.running.set(ep, ac);
    const cfg = this.config;
    const timer = setTimeout(() => ac.abort(), cfg.timeout_ms);
    let passed = false;
    let detail = 'ok';
    try {
      await this.probe(ep, cfg, ac.signal);
      passed = true;
    } catch (err) {
      detail = ac.signal.aborted ? `no answer within ${cfg.timeout_ms} ms` : (err as Error).message;
    } finally {
      clearTimeout(timer);
    }
    if (this.running.get(ep) !== ac) return; // removed meanwhile: not counted
    this.running.delete(ep);
    this.record(ep, passed, detail, cfg);
    if (this.endpoints.has(ep) && !this.stopped) this.schedule(ep, this.config.interval_ms);
  }

  private record(ep: Endpoint, passed: boolean, detail: string, cfg: HealthCheckConfig): void {
    trace(`${ep.cluster} ${ep.uri}: check ${passed ? 'passed' : `failed: ${detail}`}`);
    if (passed) {
      ep.stats.healthChecksPassed++;
      ep.consecutiveChecksPassed++;
      ep.consecutiveChecksFailed = 0;
      if (ep.health === 'unknown') ep.transitionTo(['unknown'], 'healthy', 'first health check passed');
      else if (ep.consecutiveChecksPassed >= cfg.healthy_threshold) ep.transitionTo(['unhealthy'], 'healthy', `${ep.consecutiveChecksPassed} health checks passed`);
    } else {
      ep.stats.healthChecksFailed++;
      ep.consecutiveChecksFailed++;
      ep.consecutiveChecksPassed = 0;
      if (ep.consecutiveChecksFailed >= cfg.unhealthy_threshold) {
        ep.transitionTo(['healthy', 'unknown'], 'unhealthy', `${ep.consecutiveChecksFailed} health checks failed, last: ${detail}`);
      }
    }
    this.events.onResult(ep, passed, detail);
  }

  /** Connect, send, expect; resolves on a pass, rejects with the reason otherwise. */
  private async probe(ep: Endpoint, cfg: HealthCheckConfig, signal: AbortSignal): Promise<void> {
    const sock = await this.dialer.dial(ep.uri, { timeoutMs: cfg.timeout_ms, signal });
    try {
      sock.on('error', () => {});
      if (cfg.send) sock.write(payloadBytes(cfg.send));
      if (cfg.expect) await expectBytes(sock, payloadBytes(cfg.expect), signal);
    } finally {
      sock.destroy();
    }
  }
}

/** Resolve once `want` appears in what `sock` sends; reject on end, error, abort or too many bytes without it. */
function expectBytes(sock: Duplex, want: Buffer, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = Buffer.alloc(0);
    let scanned = 0;
    const done = (err?: Error) => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', done);
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer) => {
      scanned += chunk.length;
      // Keep only a tail long enough to hold a match spanning chunks.
      seen = Buffer.concat([seen, chunk]);
      if (seen.includes(want)) return done();
      if (scanned > MAX_EXPECT_SCAN_BYTES) return done(new Error(`expected bytes not among the first ${MAX_EXPECT_SCAN_BYTES} received`));
      if (seen.length >= want.length) seen = seen.subarray(seen.length - want.length + 1);
    };
    const onEnd = () => done(new Error('endpoint closed before sending the expected bytes'));
    const onAbort = () => done(new Error('aborted'));
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('error', done);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
