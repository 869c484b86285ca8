/**
 * Telemetry for one gateway: the logger, a tracer and the gateway's metrics,
 * all owned by one `Telemetry` object. Nothing is registered globally, so
 * several gateways (or tests) can run in one process without seeing each
 * other's spans or counters.
 *
 * Metrics are served in the Prometheus text format on `listen.metrics` by our
 * own node:http server, which binds exactly the configured address (the
 * exporter's built-in server would bind every interface when no host is given
 * and treats port 0 as "use 9464").
 *
 * The hot path never touches metrics: byte counts and open-socket gauges are
 * read through callbacks at scrape time; only rare events (a connect, a
 * fallback, an attach, an RPC) are recorded as they happen.
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  context,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Counter,
  type Histogram,
  type Meter,
  type ObservableCounter,
  type ObservableUpDownCounter,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMilliseconds, type ExportResult } from '@opentelemetry/core';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_NETWORK_PEER_ADDRESS,
  ATTR_NETWORK_PEER_PORT,
  ATTR_NETWORK_TRANSPORT,
  ATTR_NETWORK_TYPE,
  ATTR_RPC_METHOD,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
} from '@opentelemetry/semantic-conventions';
import { splitListenAddress } from './config.js';
import { AddressInUseError, InvalidArgumentError } from '../proto/errors.js';
import { createLogger, type Logger } from '../native/log.js';
import { tracer as namedTracer } from '../native/trace.js';

const TRACER = 'telemetry';
const debugTrace = namedTracer(TRACER);

/** Instrumentation scope name for our tracer and meter. */
const SCOPE_NAME = 'sockgate';
/** Path Prometheus scrapes; the exporter's default, which scrape configs assume. */
const METRICS_PATH = '/metrics';
/**
 * RPC latency buckets in milliseconds: control calls on a local gateway take
 * well under a millisecond, a Connect to a far destination can take seconds.
 */
const RPC_DURATION_BUCKETS_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/**
 * Attribute keys used on spans and metrics, in one table. The OTel keys come
 * from @opentelemetry/semantic-conventions where it has a stable constant;
 * `rpc.system`, `rpc.service` and `rpc.grpc.status_code` are only in its
 * incubating entry point (which libraries are told not to import), so they are
 * spelled out here. Keys are the OTel attribute names upper-cased with `.`
 * turned into `_`; ours drop the `sockgate.` prefix (ATTR.TRANSPORT is
 * `sockgate.transport`). The table is typed exactly, so a misspelt key is a
 * compile error rather than an `undefined` attribute name.
 */
export const ATTR = {
  NETWORK_TRANSPORT: ATTR_NETWORK_TRANSPORT,
  NETWORK_TYPE: ATTR_NETWORK_TYPE,
  SERVER_ADDRESS: ATTR_SERVER_ADDRESS,
  SERVER_PORT: ATTR_SERVER_PORT,
  NETWORK_PEER_ADDRESS: ATTR_NETWORK_PEER_ADDRESS,
  NETWORK_PEER_PORT: ATTR_NETWORK_PEER_PORT,
  CLIENT_ADDRESS: ATTR_CLIENT_ADDRESS,
  RPC_SYSTEM: 'rpc.system',
  RPC_SERVICE: 'rpc.service',
  RPC_METHOD: ATTR_RPC_METHOD,
  RPC_GRPC_STATUS_CODE: 'rpc.grpc.status_code',
  /** Negotiated data-plane transport: shm, rdma, smc, tcp, grpc. */
  TRANSPORT: 'sockgate.transport',
  /** Stable fallback reason code, e.g. NO_RDMA_DEVICE. */
  FALLBACK_REASON: 'sockgate.fallback_reason',
  /** Caller identity name after authentication. */
  IDENTITY: 'sockgate.identity',
  /** Gateway socket id. */
  SOCKET_ID: 'sockgate.socket_id',
} as const satisfies { readonly [k: string]: string };

/** Label keys that are ours but not span attributes (metric-only dimensions). */
const LABEL = {
  RESULT: 'result',
  TRANSPORT: 'transport',
  REASON: 'reason',
  DIRECTION: 'direction',
  KIND: 'kind',
} as const;

type InstrumentKind = 'counter' | 'histogram' | 'observableCounter' | 'observableUpDownCounter';

interface InstrumentSpec {
  readonly name: string;
  readonly kind: InstrumentKind;
  readonly description: string;
  readonly unit: string;
}

/**
 * Every metric the gateway exports, declared once. In the Prometheus exposition
 * `.` becomes `_` and monotonic counters gain `_total`: `sockgate_connects_total`,
 * `sockgate_fallbacks_total`, `sockgate_attaches_total`, `sockgate_bytes_total`,
 * `sockgate_sockets_open` (a gauge), `sockgate_rpc_duration_{bucket,sum,count}`,
 * `sockgate_datagrams_dropped_total`.
 */
export const METRICS = {
  connects: {
    name: 'sockgate.connects',
    kind: 'counter',
    description: 'Outbound connect attempts by result and L4 protocol',
    unit: '{connect}',
  },
  fallbacks: {
    name: 'sockgate.fallbacks',
    kind: 'counter',
    description: 'Data-plane transports declined or failed, by transport given up and reason code',
    unit: '{fallback}',
  },
  attaches: {
    name: 'sockgate.attaches',
    kind: 'counter',
    description: 'Data-plane attach attempts by transport and result',
    unit: '{attach}',
  },
  rpcDuration: {
    name: 'sockgate.rpc.duration',
    kind: 'histogram',
    description: 'Control-plane RPC duration by method and gRPC status code',
    unit: 'ms',
  },
  bytes: {
    name: 'sockgate.bytes',
    kind: 'observableCounter',
    description: 'Payload bytes moved by transport and direction',
    unit: 'By',
  },
  datagramsDropped: {
    name: 'sockgate.datagrams.dropped',
    kind: 'observableCounter',
    description: 'Received datagrams not delivered to a reader, by reason (queue_full: the socket queue was at its byte or count bound; no_reader)',
    unit: '{datagram}',
  },
  socketsOpen: {
    name: 'sockgate.sockets.open',
    kind: 'observableUpDownCounter',
    description: 'Open sockets by kind and transport',
    unit: '{socket}',
  },
} as const satisfies Record<string, InstrumentSpec>;

export type ConnectResult = 'ok' | 'refused' | 'unreachable' | 'timeout' | 'dns' | 'denied' | 'invalid' | 'limit' | 'error';
export type AttachResult = 'ok' | 'wrong_token' | 'replayed' | 'expired' | 'error';
/** Cumulative totals since the gateway started, per transport and direction. */
export interface ByteSample {
  transport: string;
  direction: 'in' | 'out';
  bytes: number;
}
/** Sockets open right now, per kind and transport. */
export interface OpenSample {
  kind: string;
  transport: string;
  count: number;
}

export interface GatewayMetrics {
  /** Counter sockgate.connects{result, network.transport}. */
  recordConnect(result: ConnectResult, protocol: 'tcp' | 'udp'): void;
  /** Counter sockgate.fallbacks{transport, reason}. */
  recordFallback(transport: string, reason: string): void;
  /** Counter sockgate.attaches{transport, result}. */
  recordAttach(transport: string, result: AttachResult): void;
  /**
   * Observable counter sockgate.datagrams.dropped{reason}: one per datagram a reader
   * did not get. Cheap on the hot path (a map increment; read at collection time).
   */
  countDatagramDrop(reason: string): void;
  /** Histogram sockgate.rpc.duration{rpc.method, rpc.grpc.status_code}, in milliseconds. */
  recordRpc(method: string, code: string, durationMs: number): void;
  /**
   * Observable counter sockgate.bytes{transport, direction}, read at collection
   * time. Several callbacks may be registered; their samples are summed.
   */
  observeBytes(fn: () => Iterable<ByteSample>): void;
  /**
   * Observable up-down counter sockgate.sockets.open{kind, transport}, read at
   * collection time. Several callbacks may be registered; their samples are summed.
   */
  observeOpenSockets(fn: () => Iterable<OpenSample>): void;
}

export interface TelemetryOptions {
  /** config.telemetry.log_level */
  logLevel: string;
  /** 'memory' keeps finished spans for tests; 'console' logs one JSON line per span. */
  traces: 'none' | 'console' | 'memory';
  /** config.listen.metrics: 'host:port' (port 0 picks one) or '' to disable. */
  metricsListen: string;
  /** Log destination; stderr if unset. */
  logDestination?: NodeJS.WritableStream;
}

export interface Telemetry {
  readonly logger: Logger;
  readonly tracer: Tracer;
  readonly metrics: GatewayMetrics;
  /**
   * The meter behind `metrics`, for components that declare instruments of
   * their own (the sidecar's per-cluster table); their series are served on
   * the same Prometheus endpoint.
   */
  readonly meter: Meter;
  /**
   * Run `fn` in an active span named `name` with `attributes`: kind SERVER, or
   * INTERNAL when nested inside another `withSpan` of this Telemetry. Records
   * the exception and sets ERROR status on throw; always ends the span.
   */
  withSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>): Promise<T>;
  /** Finished spans when traces === 'memory' (tests); [] otherwise. Kept after shutdown. */
  finishedSpans(): ReadableSpan[];
  /** URL of the Prometheus endpoint after start(), e.g. http://127.0.0.1:9464/metrics; undefined if disabled or not started. */
  readonly metricsUrl: string | undefined;
  /** Start the Prometheus HTTP server. Idempotent; rejects after shutdown(). */
  start(): Promise<void>;
  /** Stop the Prometheus server and the providers. Idempotent. */
  shutdown(): Promise<void>;
}

export function createTelemetry(options: TelemetryOptions): Telemetry {
  return new GatewayTelemetry(options);
}

/** A memory exporter that keeps its spans after shutdown, so tests can read them once the gateway is closed. */
class RetainingMemorySpanExporter extends InMemorySpanExporter {
  override shutdown(): Promise<void> {
    this._stopped = true;
    return Promise.resolve();
  }
}

/** Writes each finished span as one structured log line (`msg: "span"`). */
class LogSpanExporter implements SpanExporter {
  /** The logger is borrowed from the Telemetry; this exporter never closes it. */
  constructor(private readonly logger: Logger) {}

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    for (const s of spans) {
      const ctx = s.spanContext();
      this.logger.info(
        {
          span: {
            name: s.name,
            kind: SpanKind[s.kind],
            traceId: ctx.traceId,
            spanId: ctx.spanId,
            parentSpanId: s.parentSpanContext?.spanId,
            start: new Date(hrTimeToMilliseconds(s.startTime)).toISOString(),
            durationMs: hrTimeToMilliseconds(s.duration),
            status: SpanStatusCode[s.status.code],
            statusMessage: s.status.message,
            attributes: s.attributes,
            events: s.events.map((e) => ({ name: e.name, attributes: e.attributes })),
          },
        },
        'span',
      );
    }
    resultCallback({ code: ExportResultCode.SUCCESS });
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/** service.version from package.json, if it can be found next to dist/. */
function packageVersion(): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { name?: string; version?: string };
    return pkg.name === 'sockgate' ? pkg.version : undefined;
  } catch {
    return undefined;
  }
}

/** `http://host:port/metrics` for a bound TCP address; IPv6 in brackets. */
function urlFor(address: AddressInfo): string {
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}${METRICS_PATH}`;
}

class GatewayMetricsImpl implements GatewayMetrics {
  /** One instrument per METRICS entry, created once in the constructor. */
  private readonly connects: Counter;
  private readonly fallbacks: Counter;
  private readonly attaches: Counter;
  private readonly rpcDuration: Histogram;
  /** Dropped datagrams by reason, since start. */
  private readonly drops = new Map<string, number>();
  /** Registered byte sources; summed per label set at each collection. */
  private readonly byteSources: Array<() => Iterable<ByteSample>> = [];
  /** Registered open-socket sources; summed per label set at each collection. */
  private readonly openSources: Array<() => Iterable<OpenSample>> = [];

  constructor(meter: Meter, private readonly logger: Logger) {
    const opts = (spec: InstrumentSpec) => ({ description: spec.description, unit: spec.unit });
    this.connects = meter.createCounter(METRICS.connects.name, opts(METRICS.connects));
    this.fallbacks = meter.createCounter(METRICS.fallbacks.name, opts(METRICS.fallbacks));
    this.attaches = meter.createCounter(METRICS.attaches.name, opts(METRICS.attaches));
    this.rpcDuration = meter.createHistogram(METRICS.rpcDuration.name, {
      ...opts(METRICS.rpcDuration),
      advice: { explicitBucketBoundaries: RPC_DURATION_BUCKETS_MS },
    });
    const bytes: ObservableCounter = meter.createObservableCounter(METRICS.bytes.name, opts(METRICS.bytes));
    bytes.addCallback((result) => {
      const sums = new Map<string, { transport: string; direction: string; bytes: number }>();
      for (const sample of this.collect(METRICS.bytes.name, this.byteSources)) {
        if (!Number.isFinite(sample.bytes) || sample.bytes < 0) continue;
        const key = `${sample.transport}\0${sample.direction}`;
        const acc = sums.get(key);
        if (acc) acc.bytes += sample.bytes;
        else sums.set(key, { transport: sample.transport, direction: sample.direction, bytes: sample.bytes });
      }
      for (const s of sums.values()) {
        result.observe(s.bytes, { [LABEL.TRANSPORT]: s.transport, [LABEL.DIRECTION]: s.direction });
      }
    });
    const dropped: ObservableCounter = meter.createObservableCounter(METRICS.datagramsDropped.name, opts(METRICS.datagramsDropped));
    dropped.addCallback((result) => {
      for (const [reason, n] of this.drops) result.observe(n, { [LABEL.REASON]: reason });
    });
    const open: ObservableUpDownCounter = meter.createObservableUpDownCounter(METRICS.socketsOpen.name, opts(METRICS.socketsOpen));
    open.addCallback((result) => {
      const sums = new Map<string, { kind: string; transport: string; count: number }>();
      for (const sample of this.collect(METRICS.socketsOpen.name, this.openSources)) {
        if (!Number.isFinite(sample.count)) continue;
        const key = `${sample.kind}\0${sample.transport}`;
        const acc = sums.get(key);
        if (acc) acc.count += sample.count;
        else sums.set(key, { kind: sample.kind, transport: sample.transport, count: sample.count });
      }
      for (const s of sums.values()) {
        result.observe(s.count, { [LABEL.KIND]: s.kind, [LABEL.TRANSPORT]: s.transport });
      }
    });
  }

  /** Samples from every source; a throwing source is logged and skipped, never fails the scrape. */
  private *collect<S>(metric: string, sources: ReadonlyArray<() => Iterable<S>>): Generator<S> {
    for (const source of sources) {
      let samples: S[];
      try {
        samples = [...source()];
      } catch (err) {
        this.logger.warn({ err, metric }, 'metrics callback threw; its samples are skipped');
        continue;
      }
      yield* samples;
    }
  }

  recordConnect(result: ConnectResult, protocol: 'tcp' | 'udp'): void {
    this.connects.add(1, { [LABEL.RESULT]: result, [ATTR.NETWORK_TRANSPORT]: protocol });
  }

  recordFallback(transport: string, reason: string): void {
    this.fallbacks.add(1, { [LABEL.TRANSPORT]: transport, [LABEL.REASON]: reason });
  }

  recordAttach(transport: string, result: AttachResult): void {
    this.attaches.add(1, { [LABEL.TRANSPORT]: transport, [LABEL.RESULT]: result });
  }

  countDatagramDrop(reason: string): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + 1);
  }

  recordRpc(method: string, code: string, durationMs: number): void {
    if (!Number.isFinite(durationMs) || durationMs < 0) return;
    this.rpcDuration.record(durationMs, { [ATTR.RPC_METHOD]: method, [ATTR.RPC_GRPC_STATUS_CODE]: code });
  }

  observeBytes(fn: () => Iterable<ByteSample>): void {
    this.byteSources.push(fn);
  }

  observeOpenSockets(fn: () => Iterable<OpenSample>): void {
    this.openSources.push(fn);
  }
}

class GatewayTelemetry implements Telemetry {
  readonly logger: Logger;
  readonly tracer: Tracer;
  readonly metrics: GatewayMetrics;
  readonly meter: Meter;

  private readonly options: TelemetryOptions;
  private readonly tracerProvider: BasicTracerProvider;
  private readonly meterProvider: MeterProvider;
  /** Pulls metrics on demand; its own HTTP server is never started (preventServerStart). */
  private readonly exporter: PrometheusExporter;
  /** Set only when traces === 'memory'. */
  private readonly memoryExporter: RetainingMemorySpanExporter | undefined;
  /**
   * The current span context of this Telemetry's withSpan calls. Our own
   * AsyncLocalStorage, because the OTel context manager is a process global
   * that we do not register; if the host process registered one, it is honoured too.
   */
  private readonly spanStore = new AsyncLocalStorage<Context>();
  /** Our metrics HTTP server; set while listening. */
  private server: Server | undefined;
  private url: string | undefined;
  /** Settles once start() has finished; reused by repeated calls. */
  private startPromise: Promise<void> | undefined;
  /** Settles once shutdown() has finished; reused by repeated calls. */
  private shutdownPromise: Promise<void> | undefined;

  constructor(options: TelemetryOptions) {
    this.options = options;
    this.logger = createLogger(options.logLevel, options.logDestination);

    const version = packageVersion();
    const resource = resourceFromAttributes({
      [ATTR_SERVICE_NAME]: 'sockgate',
      ...(version ? { [ATTR_SERVICE_VERSION]: version } : {}),
    });

    const spanProcessors: SpanProcessor[] = [];
    if (options.traces === 'memory') {
      this.memoryExporter = new RetainingMemorySpanExporter();
      spanProcessors.push(new SimpleSpanProcessor(this.memoryExporter));
    } else if (options.traces === 'console') {
      spanProcessors.push(new SimpleSpanProcessor(new LogSpanExporter(this.logger)));
    }
    this.tracerProvider = new BasicTracerProvider({
      resource,
      spanProcessors,
      // With nowhere to send spans, do not record them at all.
      ...(options.traces === 'none' ? { sampler: new AlwaysOffSampler() } : {}),
    });
    this.tracer = this.tracerProvider.getTracer(SCOPE_NAME, version);

    this.exporter = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
    this.meterProvider = new MeterProvider({ resource, readers: [this.exporter] });
    this.meter = this.meterProvider.getMeter(SCOPE_NAME, version);
    this.metrics = new GatewayMetricsImpl(this.meter, this.logger);
  }

  get metricsUrl(): string | undefined {
    return this.url;
  }

  async withSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
    const ours = this.spanStore.getStore();
    const parent = ours ?? context.active();
    const nested = trace.getSpan(parent) !== undefined;
    const span = this.tracer.startSpan(name, { kind: nested ? SpanKind.INTERNAL : SpanKind.SERVER, attributes }, parent);
    const ctx = trace.setSpan(parent, span);
    try {
      return await this.spanStore.run(ctx, () => context.with(ctx, () => fn(span)));
    } catch (err) {
      if (err instanceof Error) {
        span.recordException(err);
        span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
      } else {
        span.recordException(String(err));
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
      }
      throw err;
    } finally {
      span.end();
    }
  }

  finishedSpans(): ReadableSpan[] {
    return this.memoryExporter ? [...this.memoryExporter.getFinishedSpans()] : [];
  }

  start(): Promise<void> {
    if (this.shutdownPromise) return Promise.reject(new Error('telemetry was shut down; create a new one'));
    this.startPromise ??= this.startServer();
    return this.startPromise;
  }

  private async startServer(): Promise<void> {
    const listen = this.options.metricsListen;
    if (listen === '') {
      debugTrace('metrics endpoint disabled');
      return;
    }
    const where = splitListenAddress(listen);
    if ('path' in where) {
      throw new InvalidArgumentError(`config key "listen.metrics": ${JSON.stringify(listen)}: Prometheus scrapes over TCP; use host:port`);
    }
    const server = createServer((req, res) => this.serve(req, res));
    // Scrapes alone must not keep a gateway process alive.
    server.unref();
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // Bind exactly the configured host: never all interfaces unless configured so.
        server.listen({ host: where.host, port: where.port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
        throw new AddressInUseError(`config key "listen.metrics": ${listen} is already in use`, { cause: err });
      }
      throw err;
    }
    server.on('error', (err) => this.logger.error({ err }, 'metrics server error'));
    this.server = server;
    this.url = urlFor(server.address() as AddressInfo);
    if (this.shutdownPromise) {
      // shutdown() ran while we were binding; it will not see this server.
      await this.closeServer();
      return;
    }
    this.logger.info({ url: this.url }, 'metrics endpoint listening');
  }

  /** GET/HEAD /metrics is the Prometheus exposition; everything else is 404 or 405. */
  private serve(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== METRICS_PATH) {
      res.statusCode = 404;
      res.end();
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.statusCode = 405;
      res.setHeader('allow', 'GET, HEAD');
      res.end();
      return;
    }
    this.exporter.getMetricsRequestHandler(req, res);
  }

  private closeServer(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.url = undefined;
    if (!server) return Promise.resolve();
    return new Promise<void>((resolve) => {
      server.close(() => resolve());
      // Keep-alive scrapers would otherwise hold close() open.
      server.closeAllConnections();
    });
  }

  shutdown(): Promise<void> {
    this.shutdownPromise ??= this.doShutdown();
    return this.shutdownPromise;
  }

  private async doShutdown(): Promise<void> {
    await this.closeServer();
    const results = await Promise.allSettled([this.meterProvider.shutdown(), this.tracerProvider.shutdown()]);
    for (const r of results) {
      if (r.status === 'rejected') this.logger.warn({ err: r.reason }, 'telemetry provider shutdown failed');
    }
    debugTrace('shut down');
  }
}
