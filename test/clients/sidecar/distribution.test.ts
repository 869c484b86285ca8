/**
 * Distribution end to end: an in-process gateway, three real echo backends,
 * a sidecar whose upstream connections ride the gateway. Each policy's
 * distribution is checked at the backends, every exchange by SHA-256, and the
 * per-endpoint metrics on the Prometheus endpoint.
 */
import test from 'ava';
import type { Socket } from 'node:net';
import { MaglevTable } from '../../../clients/sidecar/lb-maglev.js';
import { startGateway, type TestGateway } from '../../helpers/harness.js';
import { baseConfig, metricValue, openLong, roundTrip, scrape, startBackends, startSidecar, streamUntil, waitUntil, type Backend } from './helpers.js';

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

test.serial('round robin: 30 connections give each backend exactly 10, every byte checked; metrics per endpoint', async (t) => {
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: backends.map((b) => b.uri), lb_policy: 'round_robin' }));
  t.teardown(() => sc.stop());
  const before = trafficNow();
  for (let i = 0; i < 30; i++) t.true(await roundTrip(sc.port('main'), `rr-${i}`, 8192), `round trip ${i}`);
  const delta = trafficNow().map((n, i) => n - before[i]!);
  t.deepEqual(delta, [10, 10, 10]);

  const text = await scrape(sc.sidecar.metricsUrl!);
  for (const b of backends) {
    const labels = { cluster: 'main', endpoint: b.uri };
    t.is(metricValue(text, 'sockgate_sidecar_endpoint_connections_total', labels), 10);
    t.is(metricValue(text, 'sockgate_sidecar_endpoint_healthy', labels), 1);
    t.is(metricValue(text, 'sockgate_sidecar_endpoint_ejected', labels), 0);
    // 10 × (hello + 8192 random bytes) each way.
    const perConn = `C:rr-0\n`.length + 8192;
    t.true(metricValue(text, 'sockgate_sidecar_endpoint_bytes_total', { ...labels, direction: 'out' })! >= 10 * perConn);
    t.true(metricValue(text, 'sockgate_sidecar_endpoint_bytes_total', { ...labels, direction: 'in' })! >= 10 * perConn);
  }
  t.is(metricValue(text, 'sockgate_sidecar_cluster_connections_total', { cluster: 'main' }), 30);
  t.is(metricValue(text, 'sockgate_sidecar_listener_connections_total', { listener: 'main' }), 30);
  await waitUntil(() => sc.sidecar.cluster('main')!.stats.active === 0, 5_000, 'sessions closed');
  const after = await scrape(sc.sidecar.metricsUrl!);
  t.is(metricValue(after, 'sockgate_sidecar_cluster_connections_active', { cluster: 'main' }), 0);
  t.true(metricValue(after, 'sockgate_sidecar_listener_closes_total', { listener: 'main', reason: 'downstream_closed' })! + (metricValue(after, 'sockgate_sidecar_listener_closes_total', { listener: 'main', reason: 'upstream_closed' }) ?? 0) === 30);
});

test.serial('least connections: long-lived connections spread 3/3/3, and new ones go where connections closed', async (t) => {
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: backends.map((b) => b.uri), lb_policy: 'least_connections' }));
  const clients = new Map<string, Socket>();
  t.teardown(async () => {
    for (const s of clients.values()) s.destroy();
    await sc.stop();
  });
  const idsBefore = backends.map((b) => b.ids.length);
  for (let i = 0; i < 9; i++) clients.set(`lc-${i}`, await openLong(sc.port('main'), `lc-${i}`));
  t.deepEqual(
    backends.map((b) => b.open.size),
    [3, 3, 3],
  );
  // Close two of backend 0's connections from the client side.
  const onFirst = backends[0]!.ids.slice(idsBefore[0]);
  const cluster = sc.sidecar.cluster('main')!;
  const ep0 = cluster.endpoint(backends[0]!.uri)!;
  for (const id of onFirst.slice(0, 2)) {
    const s = clients.get(id)!;
    clients.delete(id);
    t.true((await streamUntil(s, () => false, { maxChunks: 4 })).ok);
  }
  await waitUntil(() => ep0.stats.active === 1, 5_000, 'endpoint 0 down to one connection');
  for (let i = 9; i < 11; i++) clients.set(`lc-${i}`, await openLong(sc.port('main'), `lc-${i}`));
  t.deepEqual(backends[0]!.ids.slice(-2), ['lc-9', 'lc-10']);
  t.deepEqual(
    backends.map((b) => b.open.size),
    [3, 3, 3],
  );
  // Every long-lived connection still carries bytes intact.
  const results = await Promise.all([...clients.values()].map((s) => streamUntil(s, () => false, { maxChunks: 8 })));
  clients.clear();
  t.true(results.every((r) => r.ok && r.bytes === 8 * 16 * 1024));
});

test.serial('maglev: each client address sticks to one backend, the one the Maglev table names', async (t) => {
  const sc = await startSidecar(baseConfig(gw.target, { endpoints: backends.map((b) => b.uri), lb_policy: 'maglev' }));
  t.teardown(() => sc.stop());
  const table = new MaglevTable(backends.map((b) => b.uri), 65537);
  const byUri = new Map(backends.map((b) => [b.uri, b]));
  const landed = new Map<string, Set<string>>();
  for (let host = 2; host < 22; host++) {
    const ip = `127.0.0.${host}`;
    for (let k = 0; k < 3; k++) {
      const id = `mg-${ip}-${k}`;
      t.true(await roundTrip(sc.port('main'), id, 1024, ip));
      const b = backends.find((x) => x.ids.at(-1) === id);
      t.truthy(b, `${id} reached no backend`);
      if (!landed.has(ip)) landed.set(ip, new Set());
      landed.get(ip)!.add(b!.name);
    }
    t.deepEqual([...landed.get(ip)!], [byUri.get(table.lookup(ip)!)!.name], `${ip}`);
  }
  const used = new Set([...landed.values()].map((s) => [...s][0]));
  t.true(used.size >= 2, 'twenty client addresses all hashed to one backend');
});
