/**
 * The load-balancer sidecar: listeners on local addresses, each balancing its
 * connections over a cluster of upstream endpoints reached through a sockgate
 * gateway. One `Sidecar` owns its listeners, clusters, gateway link and
 * telemetry.
 *
 * Reloads (`reload()`, SIGHUP in the CLI, or a change of the config file)
 * never drop an established connection: listeners are added, removed or
 * rebound, clusters' endpoint sets and settings are updated in place, and
 * every open connection keeps running on the endpoint it has. A new config is
 * validated first and applied all-or-nothing; a bad one is rejected with an
 * error naming the key, logged, and the running config stays.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { InvalidArgumentError } from '../../proto/errors.js';
import type { Logger } from '../../native/log.js';
import type { Meter } from '@opentelemetry/api';
import { tracer } from '../../native/trace.js';
import { Cluster, type ClusterSnapshot, type Resolver } from './cluster.js';
import type { EndpointSnapshot } from './endpoint.js';
import { GatewayLink } from './gateway-link.js';
import { Listener, type ListenerSnapshot } from './listener.js';
import { parseListenerAddress, parseSidecarConfig, validateSidecarConfig, type SidecarConfig } from './sidecar-config.js';
import { registerSidecarMetrics, type SidecarMetricsSource } from './sidecar-metrics.js';

const TRACER = 'sidecar';
const trace = tracer(TRACER);

/** Editors and ConfigMap updates write a file in several steps; reload once they have settled. */
const CONFIG_WATCH_DEBOUNCE_MS = 200;
/** After the drain time ran out, aborted connections get this long to finish closing. */
const ABORT_GRACE_MS = 2_000;

export interface SidecarOptions {
  /** The config file: read at start (unless `config` is given), reread by reload(), watched unless `watch` is false. */
  configPath?: string;
  /** The config to start with (already validated); otherwise read from `configPath`. */
  config?: SidecarConfig;
  /** Reload when the config file changes (default: true when `configPath` is set). */
  watch?: boolean;
  /** Where log lines go (default stderr). */
  logDestination?: NodeJS.WritableStream;
  /** Name resolution for `dns` clusters (default: the system resolver). */
  resolver?: Resolver;
  /** Bearer token for the gateway when the config's `gateway` section has none (the CLI passes $SOCKGATE_TOKEN). */
  gatewayToken?: string;
  /** Makes the logger and metrics endpoint; injected by the composition root (the CLI passes the gateway's createTelemetry). */
  createTelemetry: SidecarTelemetryFactory;
}

/** What the sidecar needs of a telemetry bundle: declared here so clients/ does not import the gateway. */
export interface SidecarTelemetry {
  readonly logger: Logger;
  readonly meter: Meter;
  readonly metricsUrl: string | undefined;
  start(): Promise<void>;
  shutdown(): Promise<void>;
}

/** Builds the sidecar's telemetry; server/telemetry.ts's createTelemetry fits. */
export type SidecarTelemetryFactory = (options: {
  logLevel: string;
  traces: 'none';
  metricsListen: string;
  logDestination?: NodeJS.WritableStream;
}) => SidecarTelemetry;

/** Outcome of a reload, as emitted in 'reload' events. */
export type ReloadEvent = { ok: true; trigger: string } | { ok: false; trigger: string; error: Error };

/** A point-in-time view of the whole sidecar. */
export interface SidecarStatus {
  listeners: ListenerSnapshot[];
  clusters: ClusterSnapshot[];
}

/**
 * Events: `'reload'` (ReloadEvent) after every reload attempt;
 * `'endpoint'` ({ cluster, endpoint: EndpointSnapshot, what }) when an
 * endpoint's health or ejection changes.
 */
export class Sidecar extends EventEmitter implements SidecarMetricsSource {
  /** Reload results, for the reloads metric. */
  readonly reloads = { ok: 0, rejected: 0 };
  /** The config in force (the last one applied). */
  private config: SidecarConfig;
  private telemetry: SidecarTelemetry | undefined;
  private logger: Logger | undefined;
  private link: GatewayLink | undefined;
  /** Listeners by name: the ones accepting. */
  private readonly listenerMap = new Map<string, Listener>();
  /** Clusters by name: the ones listeners use. */
  private readonly clusterMap = new Map<string, Cluster>();
  /** Listeners that stopped accepting (removed or rebound) while connections remain. */
  private readonly retiredListeners = new Set<Listener>();
  /** Clusters removed from the config while connections remain. */
  private readonly retiredClusters = new Set<Cluster>();
  /** SHA-256 of the config file text last applied, so unrelated file events do not reload. */
  private appliedFileHash: string | undefined;
  private watcher: FSWatcher | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  /** Reloads run one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private started = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: SidecarOptions) {
    super();
    if (!options.config && !options.configPath) throw new InvalidArgumentError('Sidecar needs a config or a configPath');
    this.config = this.withToken(options.config ?? this.readConfigFile().config);
  }

  private withToken(cfg: SidecarConfig): SidecarConfig {
    const token = this.options.gatewayToken;
    return token && !cfg.gateway.token ? { ...cfg, gateway: { ...cfg.gateway, token } } : cfg;
  }

  private readConfigFile(): { config: SidecarConfig; hash: string } {
    const path = this.options.configPath!;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new InvalidArgumentError(`cannot read sidecar config file ${path}: ${(err as Error).message}`, { cause: err });
    }
    const hash = createHash('sha256').update(text).digest('hex');
    return { config: this.withToken(parseSidecarConfig(text, path)), hash };
  }

  /**
   * Start: telemetry, the gateway connection, clusters (DNS resolved and a
   * first round of health checks, each bounded by its timeout), listeners.
   * Rejects (having released what it took) if any of them fails.
   */
  async start(): Promise<void> {
    if (this.started) throw new InvalidArgumentError('sidecar already started');
    this.started = true;
    const cfg = this.config;
    const telemetry = this.options.createTelemetry({
      logLevel: cfg.telemetry.log_level,
      traces: 'none',
      metricsListen: cfg.telemetry.metrics,
      ...(this.options.logDestination ? { logDestination: this.options.logDestination } : {}),
    });
    this.telemetry = telemetry;
    this.logger = telemetry.logger.child({ component: 'sidecar' });
    try {
      await telemetry.start();
      registerSidecarMetrics(telemetry.meter, this);
      this.link = await GatewayLink.connect(cfg.gateway);
      await this.apply(cfg, true);
    } catch (err) {
      await this.destroy();
      throw err;
    }
    if (this.options.configPath) {
      // The file as it is now counts as applied: only a later change reloads.
      this.appliedFileHash = this.tryHashFile();
      if (this.options.watch ?? true) this.watchConfig(this.options.configPath);
    }
    this.logger.info(
      { gateway: cfg.gateway.target, listeners: Object.fromEntries([...this.listenerMap].map(([n, l]) => [n, l.addressText])), metrics: telemetry.metricsUrl },
      'sidecar started',
    );
  }

  /** URL of the Prometheus endpoint, if enabled. */
  get metricsUrl(): string | undefined {
    return this.telemetry?.metricsUrl;
  }

  /** A listener by name (the accepting one). */
  listener(name: string): Listener | undefined {
    return this.listenerMap.get(name);
  }

  /** A cluster by name (a current one). */
  cluster(name: string): Cluster | undefined {
    return this.clusterMap.get(name);
  }

  /** Current listeners and retired ones with open connections (metrics source). */
  *allListeners(): Iterable<Listener> {
    yield* this.listenerMap.values();
    for (const l of this.retiredListeners) {
      if (l.openConnections === 0) this.retiredListeners.delete(l);
      else yield l;
    }
  }

  /** Current clusters and retired ones with open connections (metrics source). */
  *allClusters(): Iterable<Cluster> {
    yield* this.clusterMap.values();
    for (const c of this.retiredClusters) {
      if (c.stats.active === 0 && c.stats.pending === 0) this.retiredClusters.delete(c);
      else yield c;
    }
  }

  status(): SidecarStatus {
    return { listeners: [...this.allListeners()].map((l) => l.snapshot()), clusters: [...this.allClusters()].map((c) => c.snapshot()) };
  }

  /** The config in force. */
  get currentConfig(): SidecarConfig {
    return this.config;
  }

  // -------------------------------------------------------------------------
  // Reload

  /**
   * Reread the config file and apply it (what SIGHUP does). Rejects with the
   * validation or apply error, which is also logged and emitted; the running
   * config then stays in force.
   */
  reload(trigger = 'reload'): Promise<void> {
    return this.serialize(async () => {
      if (!this.options.configPath) throw new InvalidArgumentError('reload(): this sidecar has no config file; use applyConfig()');
      let next: SidecarConfig;
      let hash: string;
      try {
        ({ config: next, hash } = this.readConfigFile());
      } catch (err) {
        this.rejected(trigger, err as Error);
        throw err;
      }
      await this.applyReload(next, trigger);
      this.appliedFileHash = hash;
    });
  }

  /** Validate and apply a config tree (embedding, tests); same rules as reload(). */
  applyConfig(tree: unknown, trigger = 'applyConfig'): Promise<void> {
    return this.serialize(async () => {
      let next: SidecarConfig;
      try {
        next = this.withToken(validateSidecarConfig(tree, trigger));
      } catch (err) {
        this.rejected(trigger, err as Error);
        throw err;
      }
      await this.applyReload(next, trigger);
    });
  }

  private serialize(fn: () => Promise<void>): Promise<void> {
    const run = this.queue.then(() => {
      if (this.closing) throw new InvalidArgumentError('sidecar is stopping; reload refused');
      if (!this.link) throw new InvalidArgumentError('sidecar is not started');
      return fn();
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private async applyReload(next: SidecarConfig, trigger: string): Promise<void> {
    try {
      await this.apply(next, false);
    } catch (err) {
      this.rejected(trigger, err as Error);
      throw err;
    }
    this.reloads.ok++;
    this.logger?.info(
      { trigger, listeners: Object.fromEntries([...this.listenerMap].map(([n, l]) => [n, l.addressText])), clusters: [...this.clusterMap.keys()] },
      'configuration reloaded',
    );
    this.emit('reload', { ok: true, trigger } satisfies ReloadEvent);
  }

  private rejected(trigger: string, error: Error): void {
    this.reloads.rejected++;
    this.logger?.error({ trigger, err: { message: error.message, code: (error as { code?: string }).code } }, `configuration reload rejected, keeping the running configuration: ${error.message}`);
    this.emit('reload', { ok: false, trigger, error } satisfies ReloadEvent);
  }

  private watchConfig(path: string): void {
    const file = basename(path);
    try {
      // Watch the directory: editors and Kubernetes ConfigMaps replace the
      // file (rename, symlink swap), which ends a watch on the file itself.
      this.watcher = watch(dirname(path), { persistent: false }, (_event, name) => {
        if (name !== null && name !== file && !String(name).startsWith('..')) return;
        clearTimeout(this.watchTimer);
        this.watchTimer = setTimeout(() => this.onFileChanged(), CONFIG_WATCH_DEBOUNCE_MS);
        this.watchTimer.unref();
      });
      this.watcher.on('error', (err) => this.logger?.warn({ err, path }, 'config file watch failed; reload with SIGHUP'));
    } catch (err) {
      this.logger?.warn({ err, path }, 'cannot watch the config file; reload with SIGHUP');
    }
  }

  private tryHashFile(): string | undefined {
    try {
      return createHash('sha256').update(readFileSync(this.options.configPath!)).digest('hex');
    } catch {
      return undefined;
    }
  }

  private onFileChanged(): void {
    if (this.closing) return;
    const hash = this.tryHashFile();
    if (hash === undefined || hash === this.appliedFileHash) return;
    trace(`config file changed (sha256 ${hash.slice(0, 12)})`);
    this.reload('file change').catch(() => {
      // Logged and emitted; a failed file reload must not retry in a loop,
      // so remember this content as seen.
      this.appliedFileHash = hash;
    });
  }

  /**
   * Apply `next`: new clusters are created and warmed, new or rebound
   * listeners bound; only if all of that worked is anything existing changed.
   */
  private async apply(next: SidecarConfig, initial: boolean): Promise<void> {
    const link = this.link!;
    const logger = this.logger!;
    if (!initial) {
      const t0 = this.config.telemetry;
      if (t0.metrics !== next.telemetry.metrics || t0.log_level !== next.telemetry.log_level) {
        logger.warn({ key: 'telemetry' }, 'telemetry settings change only on restart; keeping the running ones');
      }
    }
    await link.update(next.gateway);

    // 1. New clusters, warmed up, visible to lookups (no existing listener uses their names yet).
    const created: Cluster[] = [];
    for (const c of next.clusters) {
      if (this.clusterMap.has(c.name)) continue;
      created.push(new Cluster(c, link, logger, this.clusterEvents, this.options.resolver));
    }
    await Promise.all(created.map((c) => c.start()));
    for (const c of created) this.clusterMap.set(c.name, c);

    // 2. New and rebound listeners.
    const bound: Listener[] = [];
    try {
      for (const l of next.listeners) {
        const cur = this.listenerMap.get(l.name);
        if (cur && sameAddress(cur.config.address, l.address)) continue;
        const nl = new Listener(l, (name) => this.clusterMap.get(name), logger);
        bound.push(nl);
        await nl.bind();
      }
    } catch (err) {
      for (const nl of bound) nl.stopAccepting();
      for (const c of created) {
        c.stop();
        this.clusterMap.delete(c.name);
      }
      throw err;
    }

    // 3. Commit: nothing below can fail.
    const nextListeners = new Map(next.listeners.map((l) => [l.name, l]));
    for (const nl of bound) {
      const old = this.listenerMap.get(nl.name);
      if (old) this.retireListener(old, `rebound to ${nl.addressText}`);
      this.listenerMap.set(nl.name, nl);
    }
    for (const [name, l] of this.listenerMap) {
      const cfg = nextListeners.get(name);
      if (!cfg) {
        this.listenerMap.delete(name);
        this.retireListener(l, 'removed from the config');
      } else {
        l.config = cfg;
      }
    }
    const nextClusters = new Map(next.clusters.map((c) => [c.name, c]));
    for (const [name, c] of this.clusterMap) {
      const cfg = nextClusters.get(name);
      if (!cfg) {
        this.clusterMap.delete(name);
        c.stop();
        if (c.stats.active > 0 || c.stats.pending > 0) this.retiredClusters.add(c);
        logger.info({ cluster: name, open: c.stats.active }, 'cluster removed; its open connections keep running');
      } else if (!created.includes(c)) {
        await c.update(cfg);
      }
    }
    this.config = next;
  }

  private retireListener(l: Listener, why: string): void {
    l.stopAccepting();
    if (l.openConnections > 0) this.retiredListeners.add(l);
    this.logger?.info({ listener: l.name, address: l.addressText, open: l.openConnections, why }, 'listener stopped accepting; its open connections keep running');
  }

  private readonly clusterEvents = {
    onEndpointChange: (cluster: Cluster, ep: { uri: string; snapshot(): EndpointSnapshot }, what: string) => {
      this.logger?.info({ cluster: cluster.name, endpoint: ep.uri, what }, 'endpoint state changed');
      this.emit('endpoint', { cluster: cluster.name, endpoint: ep.snapshot(), what });
    },
    onEndpointsChanged: (cluster: Cluster, added: readonly string[], removed: readonly string[]) => {
      this.logger?.info({ cluster: cluster.name, added, removed }, 'cluster endpoints changed');
    },
    onResolveError: (cluster: Cluster, err: Error) => {
      this.logger?.warn({ cluster: cluster.name, err: { message: err.message } }, 'DNS resolution failed; keeping the last endpoints');
    },
  };

  // -------------------------------------------------------------------------
  // Stop

  /**
   * Graceful stop: stop accepting, let open connections finish for up to
   * `drainTimeoutMs` (default: shutdown.drain_timeout_ms), close what is left,
   * then release the gateway and telemetry. Idempotent.
   */
  close(drainTimeoutMs = this.config.shutdown.drain_timeout_ms): Promise<void> {
    this.closing ??= this.doClose(drainTimeoutMs);
    return this.closing;
  }

  /** Abort every connection and stop at once. Idempotent. */
  destroy(): Promise<void> {
    return this.close(0);
  }

  private async doClose(drainMs: number): Promise<void> {
    this.watcher?.close();
    clearTimeout(this.watchTimer);
    await this.queue;
    const all = [...this.listenerMap.values(), ...this.retiredListeners];
    for (const l of all) l.stopAccepting();
    const open = all.reduce((n, l) => n + l.openConnections, 0);
    if (open > 0 && drainMs > 0) this.logger?.info({ open, drain_timeout_ms: drainMs }, 'draining open connections');
    const drained = (await Promise.all(all.map((l) => l.drained(drainMs)))).every(Boolean);
    if (!drained) {
      const left = all.reduce((n, l) => n + l.openConnections, 0);
      if (drainMs > 0) this.logger?.warn({ open: left }, 'drain time over; closing the remaining connections');
      for (const l of all) l.closeConnections('shutdown');
      await Promise.all(all.map((l) => l.drained(ABORT_GRACE_MS)));
    }
    for (const c of [...this.clusterMap.values(), ...this.retiredClusters]) c.stop();
    this.link?.close();
    this.logger?.info('sidecar stopped');
    await this.telemetry?.shutdown();
  }
}

/** Whether two listener addresses are the same binding (so the listener stays bound across a reload). */
function sameAddress(a: string | number, b: string | number): boolean {
  const x = parseListenerAddress(a);
  const y = parseListenerAddress(b);
  return x.host === y.host && x.port === y.port;
}
