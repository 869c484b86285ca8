/**
 * Failure handling end to end (in-process gateway, real backends): a backend
 * killed mid-test is ejected and gets no new connection, then comes back
 * through active health checks once restarted on its port; circuit breakers
 * close connections at once; a connect timeout retries on another endpoint;
 * idle connections are closed on both sides; half-close passes through; and
 * a backend that stops reading stalls the client without the sidecar
 * buffering more than its watermarks.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { startGateway, tcpServer, within, type TestGateway } from '../../helpers/harness.js';
import {
  HC_SEND,
  blackHole,
  baseConfig,
  closed,
  dial,
  metricValue,
  openLong,
  roundTrip,
  scrape,
  startBackends,
  startSidecar,
  streamUntil,
  waitUntil,
  type Backend,
} from './helpers.js';

let gw: TestGateway;
let backends: Backend[];

test.before(async () => {
  gw = await startGateway();
  backends = await startBackends(3);
});

test.after.always(async () => {
  await Promise.all(backends.map((b) => b.kill()));
  await gw.stop();
});

const trafficNow = () => backends.map((b) => b.traffic);

test.serial('a backend killed mid-test is ejected, gets no new connection, and returns after health checks pass', async (t) => {
  const sc = await startSidecar(
    baseConfig(gw.target, {
      endpoints: backends.map((b) => b.uri),
      retries: 2,
      health_check: { interval_ms: 300, timeout_ms: 500, unhealthy_threshold: 5, healthy_threshold: 2, send: { text: HC_SEND }, expect: { text: 'HC-PING' } },
      outlier_detection: { consecutive_failures: 1, base_ejection_ms: 60_000, max_ejection_ms: 120_000, max_ejection_percent: 50 },
    }),
  );
  t.teardown(() => sc.stop());
  const cluster = sc.sidecar.cluster('main')!;
  const victim = backends[1]!;
  const ep = cluster.endpoint(victim.uri)!;
  t.is(ep.health, 'healthy', 'the first round of health checks ran before listening');

  let before = trafficNow();
  for (let i = 0; i < 9; i++) t.true(await roundTrip(sc.port('main'), `warm-${i}`));
  t.deepEqual(trafficNow().map((n, i) => n - before[i]!), [3, 3, 3]);

  await victim.kill();
  // Clients do not notice: the failed connect is retried on another endpoint.
  for (let i = 0; i < 6; i++) t.true(await roundTrip(sc.port('main'), `during-${i}`));
  t.true(ep.ejected, 'killed backend ejected after its connect failure');
  t.is(ep.stats.ejections, 1);
  t.true(ep.stats.connectFailures.refused >= 1);
  t.regex(sc.logs(), /endpoint ejected after consecutive connect failures/);

  const attempts = ep.stats.attempts;
  before = trafficNow();
  for (let i = 0; i < 12; i++) t.true(await roundTrip(sc.port('main'), `after-${i}`));
  t.is(ep.stats.attempts, attempts, 'no new connection attempt went to the ejected endpoint');
  const delta = trafficNow().map((n, i) => n - before[i]!);
  t.deepEqual(delta, [6, 0, 6]);
  await waitUntil(() => ep.health === 'unhealthy', 5_000, 'active checks mark it unhealthy');

  const text = await scrape(sc.sidecar.metricsUrl!);
  const labels = { cluster: 'main', endpoint: victim.uri };
  t.is(metricValue(text, 'sockgate_sidecar_endpoint_ejections_total', labels), 1);
  t.is(metricValue(text, 'sockgate_sidecar_endpoint_ejected', labels), 1);
  t.is(metricValue(text, 'sockgate_sidecar_endpoint_healthy', labels), 0);
  t.true(metricValue(text, 'sockgate_sidecar_endpoint_connect_failures_total', { ...labels, reason: 'refused' })! >= 1);

  await victim.start();
  // Health checks pass twice (healthy_threshold), the first pass also ends the 60 s ejection.
  await waitUntil(() => ep.available, 5_000, 'restarted backend available again');
  t.is(ep.health, 'healthy');
  t.false(ep.ejected);
  before = trafficNow();
  for (let i = 0; i < 30; i++) t.true(await roundTrip(sc.port('main'), `back-${i}`));
  t.deepEqual(trafficNow().map((n, i) => n - before[i]!), [10, 10, 10]);
  t.true(victim.other > 0, 'health checks reached the backend');
});

test.serial('circuit breaker: over max_connections the downstream is closed at once and counted', async (t) => {
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: [backends[0]!.uri], circuit_breakers: { max_connections: 2, max_pending: 10 } }));
  const longs: Socket[] = [];
  t.teardown(async () => {
    for (const s of longs) s.destroy();
    await sc.stop();
  });
  longs.push(await openLong(sc.port('main'), 'cb-0'), await openLong(sc.port('main'), 'cb-1'));
  const third = await dial(sc.port('main'));
  third.write('C:cb-2\n');
  const res = await closed(third, 2_000);
  t.false(res.gotBytes);
  t.true(res.ms < 1_000, `closed after ${res.ms} ms`);
  const cluster = sc.sidecar.cluster('main')!;
  t.is(cluster.stats.overflow.connections, 1);
  t.is(sc.sidecar.listener('main')!.stats.closes.overflow_connections, 1);
  const text = await scrape(sc.sidecar.metricsUrl!);
  t.is(metricValue(text, 'sockgate_sidecar_cluster_overflows_total', { cluster: 'main', limit: 'connections' }), 1);
  // Room again once one closes.
  t.true((await streamUntil(longs.shift()!, () => false, { maxChunks: 2 })).ok);
  await waitUntil(() => cluster.stats.active === 1, 5_000, 'one connection left');
  t.true(await roundTrip(sc.port('main'), 'cb-3'));
});

test.serial('circuit breaker: over max_pending the downstream is closed at once', async (t) => {
  const hole = await blackHole();
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: [hole.uri], connect_timeout_ms: 3_000, circuit_breakers: { max_connections: 100, max_pending: 1 } }));
  t.teardown(async () => {
    await sc.stop();
    await hole.close();
  });
  const waiting = await dial(sc.port('main'));
  const cluster = sc.sidecar.cluster('main')!;
  await waitUntil(() => cluster.stats.pending === 1, 2_000, 'first connection pending');
  const second = await dial(sc.port('main'));
  const res = await closed(second, 2_000);
  t.true(res.ms < 1_000);
  t.is(cluster.stats.overflow.pending, 1);
  // The waiting one is dropped as soon as the app resets it, not at the connect timeout.
  waiting.resetAndDestroy();
  await waitUntil(() => cluster.stats.pending === 0, 1_000, 'pending connect abandoned');
  t.is(sc.sidecar.listener('main')!.stats.closes.downstream_aborted, 1);
});

test.serial('connect timeout: an endpoint that never answers is given up after connect_timeout_ms and the retry goes elsewhere', async (t) => {
  const hole = await blackHole();
  const cfg = baseConfig(gw.target, { endpoints: [hole.uri, backends[0]!.uri], lb_policy: 'round_robin', connect_timeout_ms: 400, retries: 1 });
  (cfg['listeners'] as unknown[]).push({ name: 'hole', address: '127.0.0.1:0', cluster: 'hole' });
  (cfg['clusters'] as unknown[]).push({ name: 'hole', endpoints: [hole.uri], connect_timeout_ms: 400, retries: 0 });
  const sc = await startSidecar(cfg);
  t.teardown(async () => {
    await sc.stop();
    await hole.close();
  });
  const t0 = Date.now();
  t.true(await roundTrip(sc.port('main'), 'ct-0'), 'retried on the live endpoint');
  const took = Date.now() - t0;
  t.true(took >= 380 && took < 3_000, `took ${took} ms`);
  const main = sc.sidecar.cluster('main')!;
  t.is(main.endpoint(hole.uri)!.stats.connectFailures.timeout, 1);
  t.is(main.stats.retriesSucceeded, 1);

  // Without a retry the app's connection is closed once the timeout passes.
  const s = await dial(sc.port('hole'));
  s.write('C:ct-1\n');
  const res = await closed(s, 5_000);
  t.false(res.gotBytes);
  t.true(res.ms >= 300 && res.ms < 3_000, `closed after ${res.ms} ms`);
  t.is(sc.sidecar.listener('hole')!.stats.closes.connect_failed, 1);
  const holeFailures = sc.sidecar.cluster('hole')!.endpoint(hole.uri)!.stats.connectFailures;
  t.is(holeFailures.timeout, 1, `the hole endpoint's connect failures by reason: ${JSON.stringify(holeFailures)}`);
  const text = await scrape(sc.sidecar.metricsUrl!);
  t.is(metricValue(text, 'sockgate_sidecar_endpoint_connect_failures_total', { cluster: 'hole', reason: 'timeout' }), 1);
});

test.serial('idle timeout closes both sides; traffic keeps a connection alive', async (t) => {
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: [backends[2]!.uri] }, { idle_timeout_ms: 400 }));
  t.teardown(() => sc.stop());
  const b = backends[2]!;
  const s = await openLong(sc.port('main'), 'idle-0');
  const onBackend = b.open.size;
  t.true(onBackend >= 1);
  const gone = closed(s, 5_000);
  // Bytes every 150 ms for ~900 ms: longer than the timeout, never idle that long.
  for (let i = 0; i < 6; i++) {
    s.write('x');
    await new Promise((r) => setTimeout(r, 150));
    t.false(s.destroyed, `closed while active (round ${i})`);
  }
  const t0 = Date.now();
  await gone;
  const idleFor = Date.now() - t0;
  t.true(idleFor >= 200 && idleFor < 2_000, `closed after ${idleFor} ms of silence`);
  await waitUntil(() => b.open.size === onBackend - 1, 5_000, 'backend side closed too');
  t.is(sc.sidecar.listener('main')!.stats.closes.idle_timeout, 1);
});

test.serial('half-close passes through both ways', async (t) => {
  // Answers with the SHA-256 of the request once the client's FIN arrives.
  const afterFin = await tcpServer((c) => {
    const h = createHash('sha256');
    c.on('data', (d: Buffer) => h.update(d));
    c.on('end', () => c.end(`sha256:${h.digest('hex')}`));
  });
  // Sends a greeting and FIN first, then counts what the client still sends.
  const finFirst = await tcpServer((c) => {
    c.end('server done\n');
    const h = createHash('sha256');
    c.on('data', (d: Buffer) => h.update(d));
    c.on('end', () => finFirstGot.push(h.digest('hex')));
  });
  const finFirstGot: string[] = [];
  const cfg = baseConfig(gw.target, { endpoints: [afterFin.uri] });
  (cfg['listeners'] as unknown[]).push({ name: 'b', address: '127.0.0.1:0', cluster: 'b' });
  (cfg['clusters'] as unknown[]).push({ name: 'b', endpoints: [finFirst.uri] });
  const sc = await startSidecar(cfg);
  t.teardown(async () => {
    await sc.stop();
    await afterFin.close();
    await finFirst.close();
  });

  const a = await dial(sc.port('main'));
  const payload = randomBytes(300_000);
  const reply: Buffer[] = [];
  a.on('data', (d: Buffer) => reply.push(d));
  a.end(payload);
  await within(once(a, 'end'), 10_000, 'reply after half-close');
  t.is(Buffer.concat(reply).toString(), `sha256:${createHash('sha256').update(payload).digest('hex')}`);

  const b = await dial(sc.port('b'));
  const greeting: Buffer[] = [];
  b.on('data', (d: Buffer) => greeting.push(d));
  await within(once(b, 'end'), 10_000, 'server FIN');
  t.is(Buffer.concat(greeting).toString(), 'server done\n');
  const late = randomBytes(200_000);
  b.end(late);
  await waitUntil(() => finFirstGot.length === 1, 10_000, 'server got the late bytes');
  t.is(finFirstGot[0], createHash('sha256').update(late).digest('hex'));
});

test.serial('backpressure: a backend that stops reading stalls the client; the sidecar buffers only up to its watermarks', async (t) => {
  t.timeout(60_000);
  const received = createHash('sha256');
  let receivedBytes = 0;
  let backendSock: Socket | undefined;
  const slow = await tcpServer((c) => {
    backendSock = c;
    c.pause();
    c.on('data', (d: Buffer) => {
      receivedBytes += d.length;
      received.update(d);
    });
  });
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: [slow.uri] }));
  t.teardown(async () => {
    await sc.stop();
    await slow.close();
  });
  const s = await dial(sc.port('main'));
  await waitUntil(() => backendSock !== undefined, 5_000, 'backend connection');
  const TOTAL = 96 << 20;
  const block = randomBytes(1 << 20);
  const sent = createHash('sha256');
  let written = 0;
  let stalled = false;
  let maxBuffered = 0;
  const listener = sc.sidecar.listener('main')!;
  while (written < TOTAL) {
    const chunk = block.subarray(0, 64 * 1024);
    sent.update(chunk);
    written += chunk.length;
    if (!s.write(chunk)) {
      const drained = await Promise.race([once(s, 'drain').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1_000))]);
      maxBuffered = Math.max(maxBuffered, listener.bufferedBytes());
      if (!drained) {
        stalled = true;
        break;
      }
    }
  }
  t.true(stalled, `the client was never stalled after ${written} bytes`);
  // Kernel buffers on three loopback hops plus 1 MiB user-space watermarks per hop: far below what was offered.
  t.true(written < TOTAL, `wrote everything (${written})`);
  t.true(maxBuffered <= 4 << 20, `sidecar held ${maxBuffered} bytes`);
  t.log(`stalled after ${(written / 2 ** 20).toFixed(1)} MiB written; sidecar user-space buffer peak ${(maxBuffered / 2 ** 10).toFixed(0)} KiB`);
  // Let the backend read: everything written arrives, intact.
  backendSock!.resume();
  await within(once(s, 'drain'), 20_000, 'client drains once the backend reads');
  s.end();
  await waitUntil(() => receivedBytes === written, 30_000, `backend receives all ${written} bytes`);
  t.is(received.digest('hex'), sent.digest('hex'));
});

test.serial('backpressure the other way: a client that stops reading stalls the backend; the sidecar stays within its watermarks', async (t) => {
  t.timeout(60_000);
  const TOTAL = 96 << 20;
  const sent = createHash('sha256');
  let written = 0;
  let stalled = false;
  let resumeWriter: (() => void) | undefined;
  const writerDone = new Promise<void>((resolve) => (resumeWriter = resolve));
  const block = randomBytes(1 << 20);
  const fast = await tcpServer((c) => {
    void (async () => {
      while (written < TOTAL && !c.destroyed) {
        const chunk = block.subarray(0, 64 * 1024);
        sent.update(chunk);
        written += chunk.length;
        if (!c.write(chunk)) {
          const drained = await Promise.race([once(c, 'drain').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1_000))]);
          if (!drained) {
            stalled = true;
            resumeWriter!();
            await once(c, 'drain');
            break;
          }
        }
      }
      c.end();
    })();
  });
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: [fast.uri] }));
  t.teardown(async () => {
    await sc.stop();
    await fast.close();
  });
  const s = await dial(sc.port('main'));
  s.pause();
  await within(writerDone, 30_000, 'backend stalls');
  t.true(stalled);
  const buffered = sc.sidecar.listener('main')!.bufferedBytes();
  t.true(written < TOTAL, `backend wrote everything (${written})`);
  t.true(buffered <= 4 << 20, `sidecar held ${buffered} bytes`);
  t.log(`backend stalled after ${(written / 2 ** 20).toFixed(1)} MiB; sidecar held ${(buffered / 2 ** 10).toFixed(0)} KiB`);
  const got = createHash('sha256');
  let gotBytes = 0;
  s.on('data', (d: Buffer) => {
    gotBytes += d.length;
    got.update(d);
  });
  s.resume();
  await within(once(s, 'end'), 30_000, 'client reads to the end');
  t.is(gotBytes, written);
  t.is(got.digest('hex'), sent.digest('hex'));
});
