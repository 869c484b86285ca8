import test from 'ava';
import { PassThrough } from 'node:stream';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { createLogger } from '../../native/log.js';
import { ATTR, createTelemetry, type ByteSample, type OpenSample, type TelemetryOptions } from '../../server/telemetry.js';

/** A sink that collects what the logger writes, one parsed JSON object per line. */
function logSink(): { stream: PassThrough; lines: () => Array<Record<string, unknown>> } {
  const stream = new PassThrough();
  let text = '';
  return {
    stream,
    lines: () => {
      // Paused mode: read() hands back whatever has been written so far, synchronously.
      for (let chunk: Buffer | null; (chunk = stream.read() as Buffer | null) !== null; ) text += chunk.toString('utf8');
      return text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    },
  };
}

function options(overrides: Partial<TelemetryOptions> = {}): TelemetryOptions {
  return { logLevel: 'silent', traces: 'none', metricsListen: '127.0.0.1:0', ...overrides };
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`scrape ${url}: HTTP ${res.status}`);
  return res.text();
}

/** The value of one exposition sample, e.g. `sockgate_connects_total{result="ok",network_transport="tcp"}`. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) continue;
    const got = new Map<string, string>();
    for (const pair of (m[1] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got.set(pair[1]!, pair[2]!);
    if (Object.entries(labels).every(([k, v]) => got.get(k) === v)) return Number(m[2]);
  }
  return undefined;
}

test('counters and observable callbacks appear in the Prometheus exposition with their labels', async (t) => {
  const tel = createTelemetry(options());
  t.teardown(() => tel.shutdown());
  await tel.start();
  const url = tel.metricsUrl;
  t.truthy(url);
  t.regex(url!, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  t.not(new URL(url!).port, '0');

  tel.metrics.recordConnect('ok', 'tcp');
  tel.metrics.recordConnect('ok', 'tcp');
  tel.metrics.recordConnect('refused', 'udp');
  tel.metrics.recordFallback('rdma', 'NO_RDMA_DEVICE');
  tel.metrics.recordFallback('rdma', 'NO_RDMA_DEVICE');
  tel.metrics.recordFallback('shm', 'NOT_COLOCATED');
  tel.metrics.recordAttach('shm', 'ok');
  tel.metrics.recordAttach('tcp', 'wrong_token');
  tel.metrics.recordRpc('Connect', 'OK', 3);
  tel.metrics.recordRpc('Connect', 'OK', 7000);

  let bytesIn = 100;
  tel.metrics.observeBytes(function* (): Iterable<ByteSample> {
    yield { transport: 'shm', direction: 'in', bytes: bytesIn };
    yield { transport: 'shm', direction: 'out', bytes: 50 };
  });
  // A second source for the same labels is added to the first.
  tel.metrics.observeBytes(() => [{ transport: 'shm', direction: 'in', bytes: 1 }]);
  let open: OpenSample[] = [
    { kind: 'stream', transport: 'tcp', count: 3 },
    { kind: 'listener', transport: 'tcp', count: 1 },
  ];
  tel.metrics.observeOpenSockets(() => open);
  // A throwing source is skipped, not fatal to the scrape.
  tel.metrics.observeOpenSockets(() => {
    throw new Error('boom');
  });

  let text = await scrape(url!);
  t.is(sample(text, 'sockgate_connects_total', { result: 'ok', network_transport: 'tcp' }), 2);
  t.is(sample(text, 'sockgate_connects_total', { result: 'refused', network_transport: 'udp' }), 1);
  t.is(sample(text, 'sockgate_fallbacks_total', { transport: 'rdma', reason: 'NO_RDMA_DEVICE' }), 2);
  t.is(sample(text, 'sockgate_fallbacks_total', { transport: 'shm', reason: 'NOT_COLOCATED' }), 1);
  t.is(sample(text, 'sockgate_attaches_total', { transport: 'shm', result: 'ok' }), 1);
  t.is(sample(text, 'sockgate_attaches_total', { transport: 'tcp', result: 'wrong_token' }), 1);
  t.is(sample(text, 'sockgate_rpc_duration_count', { rpc_method: 'Connect', rpc_grpc_status_code: 'OK' }), 2);
  t.is(sample(text, 'sockgate_rpc_duration_sum', { rpc_method: 'Connect', rpc_grpc_status_code: 'OK' }), 7003);
  t.is(sample(text, 'sockgate_rpc_duration_bucket', { rpc_method: 'Connect', le: '5' }), 1);
  t.is(sample(text, 'sockgate_bytes_total', { transport: 'shm', direction: 'in' }), 101);
  t.is(sample(text, 'sockgate_bytes_total', { transport: 'shm', direction: 'out' }), 50);
  t.is(sample(text, 'sockgate_sockets_open', { kind: 'stream', transport: 'tcp' }), 3);
  t.is(sample(text, 'sockgate_sockets_open', { kind: 'listener', transport: 'tcp' }), 1);
  t.regex(text, /# TYPE sockgate_connects_total counter/);
  t.regex(text, /# TYPE sockgate_bytes_total counter/);
  t.regex(text, /# TYPE sockgate_sockets_open gauge/);
  t.regex(text, /# TYPE sockgate_rpc_duration histogram/);

  // Callbacks are read at each scrape.
  bytesIn = 1000;
  open = [{ kind: 'stream', transport: 'tcp', count: 2 }];
  text = await scrape(url!);
  t.is(sample(text, 'sockgate_bytes_total', { transport: 'shm', direction: 'in' }), 1001);
  t.is(sample(text, 'sockgate_sockets_open', { kind: 'stream', transport: 'tcp' }), 2);

  // Only /metrics is served.
  const other = await fetch(new URL('/other', url!));
  t.is(other.status, 404);
  await other.arrayBuffer();
});

test('shutdown is idempotent and closes the metrics port', async (t) => {
  const tel = createTelemetry(options());
  await tel.start();
  await tel.start();
  const url = tel.metricsUrl!;
  await scrape(url);
  await Promise.all([tel.shutdown(), tel.shutdown()]);
  await tel.shutdown();
  t.is(tel.metricsUrl, undefined);
  await t.throwsAsync(fetch(url));
  await t.throwsAsync(tel.start());
});

test('metricsListen "" disables the endpoint', async (t) => {
  const tel = createTelemetry(options({ metricsListen: '' }));
  await tel.start();
  t.is(tel.metricsUrl, undefined);
  tel.metrics.recordConnect('ok', 'tcp');
  await tel.shutdown();
  t.pass();
});

test('a unix: metrics address is refused with the key named', async (t) => {
  const tel = createTelemetry(options({ metricsListen: 'unix:/tmp/sockgate-metrics.sock' }));
  const err = await t.throwsAsync(tel.start());
  t.regex(err!.message, /listen\.metrics/);
  await tel.shutdown();
});

test('a metrics port already in use is reported with the key named', async (t) => {
  const first = createTelemetry(options());
  t.teardown(() => first.shutdown());
  await first.start();
  const second = createTelemetry(options({ metricsListen: new URL(first.metricsUrl!).host }));
  t.teardown(() => second.shutdown());
  const err = await t.throwsAsync(second.start());
  t.is((err as Error & { code?: string }).code, 'ERR_SOCKGATE_ADDRESS_IN_USE');
  t.regex(err!.message, /listen\.metrics/);
});

test('two gateways in one process keep separate metrics', async (t) => {
  const a = createTelemetry(options());
  const b = createTelemetry(options());
  t.teardown(() => Promise.all([a.shutdown(), b.shutdown()]));
  await Promise.all([a.start(), b.start()]);
  t.not(a.metricsUrl, b.metricsUrl);
  a.metrics.recordConnect('timeout', 'tcp');
  t.is(sample(await scrape(a.metricsUrl!), 'sockgate_connects_total', { result: 'timeout' }), 1);
  t.is(sample(await scrape(b.metricsUrl!), 'sockgate_connects_total', { result: 'timeout' }), undefined);
});

test('withSpan records attributes, nests, and ends the span', async (t) => {
  const tel = createTelemetry(options({ traces: 'memory', metricsListen: '' }));
  t.teardown(() => tel.shutdown());
  const out = await tel.withSpan('sockgate.v1.SocketGatewayService/Connect', { [ATTR.RPC_METHOD]: 'Connect', [ATTR.RPC_SYSTEM]: 'grpc' }, async (span) => {
    span.setAttribute(ATTR.TRANSPORT, 'shm');
    await tel.withSpan('dial', { [ATTR.SERVER_ADDRESS]: 'db.internal', [ATTR.SERVER_PORT]: 5432 }, async () => undefined);
    return 42;
  });
  t.is(out, 42);
  const spans = tel.finishedSpans();
  t.is(spans.length, 2);
  const outer = spans.find((s) => s.name === 'sockgate.v1.SocketGatewayService/Connect')!;
  const inner = spans.find((s) => s.name === 'dial')!;
  t.is(outer.kind, SpanKind.SERVER);
  t.is(outer.attributes['rpc.method'], 'Connect');
  t.is(outer.attributes['rpc.system'], 'grpc');
  t.is(outer.attributes['sockgate.transport'], 'shm');
  t.is(outer.status.code, SpanStatusCode.UNSET);
  t.true(outer.ended);
  t.is(inner.kind, SpanKind.INTERNAL);
  t.is(inner.attributes['server.address'], 'db.internal');
  t.is(inner.attributes['server.port'], 5432);
  t.is(inner.parentSpanContext?.spanId, outer.spanContext().spanId);
  t.is(inner.spanContext().traceId, outer.spanContext().traceId);
});

test('withSpan sets ERROR status and records the exception on throw', async (t) => {
  const tel = createTelemetry(options({ traces: 'memory', metricsListen: '' }));
  t.teardown(() => tel.shutdown());
  const err = await t.throwsAsync(
    tel.withSpan('Connect', { [ATTR.IDENTITY]: 'vm-17' }, async () => {
      throw new Error('connection refused');
    }),
  );
  t.is(err!.message, 'connection refused');
  // A synchronous throw from fn is handled the same way.
  await t.throwsAsync(tel.withSpan('Sync', {}, () => {
    throw new TypeError('sync');
  }));
  const [span, sync] = tel.finishedSpans();
  t.is(span!.status.code, SpanStatusCode.ERROR);
  t.is(span!.status.message, 'connection refused');
  t.is(span!.attributes['sockgate.identity'], 'vm-17');
  t.true(span!.ended);
  const exception = span!.events.find((e) => e.name === 'exception');
  t.truthy(exception);
  t.is(exception!.attributes?.['exception.message'], 'connection refused');
  t.is(sync!.status.code, SpanStatusCode.ERROR);
  // Spans stay readable after shutdown.
  await tel.shutdown();
  t.is(tel.finishedSpans().length, 2);
});

test('finishedSpans is empty unless traces is memory', async (t) => {
  const tel = createTelemetry(options({ traces: 'none', metricsListen: '' }));
  t.teardown(() => tel.shutdown());
  t.is(await tel.withSpan('x', {}, async () => 'v'), 'v');
  t.deepEqual(tel.finishedSpans(), []);
});

test('traces: console writes one JSON log line per span', async (t) => {
  const sink = logSink();
  const tel = createTelemetry(options({ traces: 'console', metricsListen: '', logLevel: 'info', logDestination: sink.stream }));
  t.teardown(() => tel.shutdown());
  await tel.withSpan('Listen', { [ATTR.SOCKET_ID]: 's-1' }, async () => undefined);
  const line = sink.lines().find((l) => l['msg'] === 'span');
  t.truthy(line);
  const span = line!['span'] as Record<string, unknown>;
  t.is(span['name'], 'Listen');
  t.is(span['kind'], 'SERVER');
  t.deepEqual(span['attributes'], { 'sockgate.socket_id': 's-1' });
});

test('the logger writes JSON lines with level, msg and service', (t) => {
  const sink = logSink();
  const log = createLogger('debug', sink.stream);
  log.info({ socket: 's-1' }, 'socket opened');
  log.debug('detail');
  log.trace('hidden below the level');
  const lines = sink.lines();
  t.is(lines.length, 2);
  t.is(lines[0]!['level'], 'info');
  t.is(lines[0]!['msg'], 'socket opened');
  t.is(lines[0]!['service'], 'sockgate');
  t.is(lines[0]!['socket'], 's-1');
  t.is(typeof lines[0]!['time'], 'string');
  t.is(lines[1]!['level'], 'debug');
});

test('telemetry.logger honours the configured level and destination', (t) => {
  const sink = logSink();
  const tel = createTelemetry(options({ logLevel: 'warn', metricsListen: '', logDestination: sink.stream }));
  t.teardown(() => tel.shutdown());
  tel.logger.info('dropped');
  tel.logger.warn('kept');
  t.deepEqual(
    sink.lines().map((l) => [l['level'], l['msg']]),
    [['warn', 'kept']],
  );
});
