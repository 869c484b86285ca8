/**
 * Hot reload end to end: endpoints added by a change of the config file and
 * removed by reload() (what SIGHUP calls) while long-lived connections stream
 * SHA-256-checked bytes through the reload; listeners added, removed and
 * rebound; a bad config rejected with the key named while the old one stays;
 * DNS clusters following their name.
 */
import test from 'ava';
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { systemResolver } from '../../../clients/sidecar/cluster.js';
import type { ReloadEvent } from '../../../clients/sidecar/sidecar.js';
import { startGateway, within, type TestGateway } from '../../helpers/harness.js';
import { Backend, baseConfig, metricValue, openLong, roundTrip, scrape, startBackends, startSidecar, streamUntil, waitUntil } from './helpers.js';

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

function nextReload(sc: { sidecar: { once(ev: 'reload', fn: (e: ReloadEvent) => void): unknown } }, ms = 5_000): Promise<ReloadEvent> {
  return within(new Promise<ReloadEvent>((resolve) => sc.sidecar.once('reload', resolve)), ms, 'reload event');
}

/** Whether a plain TCP connect to 127.0.0.1:port (or host) is refused. */
async function refused(port: number, host = '127.0.0.1'): Promise<boolean> {
  const s = netConnect(port, host);
  try {
    await within(once(s, 'connect'), 2_000, 'connect');
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  } finally {
    s.destroy();
  }
}

test.serial('endpoints added by a file change and removed by reload(): no established connection dropped, every byte checked', async (t) => {
  t.timeout(90_000);
  const [b0, b1, b2] = backends as [Backend, Backend, Backend];
  const cfg = baseConfig(gw.target, { endpoints: [b0.uri, b1.uri] });
  const sc = await startSidecar(cfg, { watch: true });
  t.teardown(() => sc.stop());

  // Four long-lived connections, two per backend, streaming through both reloads.
  const longs: Socket[] = [];
  for (let i = 0; i < 4; i++) longs.push(await openLong(sc.port('main'), `long-${i}`));
  t.deepEqual([b0.open.size, b1.open.size], [2, 2]);
  let stop = false;
  const streams = longs.map((s) => streamUntil(s, () => stop, { chunk: 8 * 1024, pauseMs: 5, maxChunks: 4_000, maxMs: 40_000 }));

  // 1. Add b2 by editing the file; the watcher reloads.
  const added = nextReload(sc);
  sc.write({ ...cfg, clusters: [{ name: 'main', endpoints: [b0.uri, b1.uri, b2.uri] }] });
  t.like(await added, { ok: true, trigger: 'file change' });
  let before = trafficNow();
  for (let i = 0; i < 9; i++) t.true(await roundTrip(sc.port('main'), `add-${i}`));
  t.deepEqual(trafficNow().map((n, i) => n - before[i]!), [3, 3, 3]);

  // 2. Remove b0 (which still carries two streaming connections) with reload().
  sc.write({ ...cfg, clusters: [{ name: 'main', endpoints: [b1.uri, b2.uri] }] });
  await sc.sidecar.reload();
  before = trafficNow();
  for (let i = 0; i < 10; i++) t.true(await roundTrip(sc.port('main'), `rm-${i}`));
  t.deepEqual(trafficNow().map((n, i) => n - before[i]!), [0, 5, 5]);
  const cluster = sc.sidecar.cluster('main')!;
  t.is(cluster.endpoint(b0.uri), undefined);
  // The removed endpoint is still reported while its connections run.
  const removed = cluster.allEndpoints().find((e) => e.uri === b0.uri)!;
  t.true(removed.removed);
  t.is(removed.stats.active, 2);
  const text = await scrape(sc.sidecar.metricsUrl!);
  t.is(metricValue(text, 'sockgate_sidecar_endpoint_connections_active', { cluster: 'main', endpoint: b0.uri }), 2);
  t.is(metricValue(text, 'sockgate_sidecar_reloads_total', { result: 'ok' }), 2);

  stop = true;
  const results = await Promise.all(streams);
  for (const r of results) t.true(r.ok && r.bytes > 0, `stream of ${r.bytes} bytes intact`);
  t.log(`streamed ${results.map((r) => (r.bytes / 2 ** 20).toFixed(1)).join(', ')} MiB across the reloads`);
  await waitUntil(() => cluster.allEndpoints().every((e) => e.uri !== b0.uri), 5_000, 'removed endpoint forgotten once its connections closed');
  t.is(sc.sidecar.listener('main')!.stats.closes.upstream_error + sc.sidecar.listener('main')!.stats.closes.downstream_error, 0);
});

test.serial('listeners added, rebound and removed; connections on a rebound listener keep running', async (t) => {
  t.timeout(60_000);
  const cfg = baseConfig(gw.target, { endpoints: [backends[0]!.uri] });
  const sc = await startSidecar(cfg);
  t.teardown(() => sc.stop());
  const oldPort = sc.port('main');
  const long = await openLong(oldPort, 'rebind-0');
  let stop = false;
  const stream = streamUntil(long, () => stop, { chunk: 8 * 1024, pauseMs: 5, maxMs: 30_000 });

  const next = {
    ...cfg,
    listeners: [
      { name: 'main', address: '127.0.0.2:0', cluster: 'main' },
      { name: 'extra', address: '127.0.0.1:0', cluster: 'other' },
    ],
    clusters: [...(cfg['clusters'] as object[]), { name: 'other', endpoints: [backends[1]!.uri] }],
  };
  await sc.sidecar.applyConfig(next);
  const main = sc.sidecar.listener('main')!;
  t.is(main.addressText.split(':')[0], '127.0.0.2');
  t.true(await refused(oldPort), 'old address no longer accepts');
  const before = trafficNow();
  const s = netConnect(main.port, '127.0.0.2');
  s.on('error', () => {});
  await within(once(s, 'connect'), 2_000, 'connect to the rebound listener');
  s.destroy();
  t.true(await roundTrip(sc.port('extra'), 'extra-0'));
  t.is(trafficNow()[1]! - before[1]!, 1, 'the new listener uses the new cluster');

  const extraPort = sc.port('extra');
  await sc.sidecar.applyConfig({ ...next, listeners: [next.listeners[0]], clusters: cfg['clusters'] });
  t.is(sc.sidecar.listener('extra'), undefined);
  t.is(sc.sidecar.cluster('other'), undefined);
  t.true(await refused(extraPort), 'removed listener no longer accepts');

  stop = true;
  const r = await stream;
  t.true(r.ok && r.bytes > 0, `connection through the rebound listener intact (${r.bytes} bytes)`);
});

test.serial('a bad config is rejected with the key named, logged, and the running config stays', async (t) => {
  const cfg = baseConfig(gw.target, { endpoints: [backends[0]!.uri] });
  const sc = await startSidecar(cfg, { watch: true });
  t.teardown(() => sc.stop());

  // Through reload() (SIGHUP).
  sc.write({ ...cfg, clusters: [{ name: 'main', endpoints: [backends[0]!.uri], lb_policy: 'weighted_random' }] });
  const err = await t.throwsAsync(sc.sidecar.reload('SIGHUP'));
  t.regex(err!.message, /clusters\.0\.lb_policy/);
  t.is((err as { code?: string }).code, 'ERR_SOCKGATE_INVALID_ARGUMENT');
  t.regex(sc.logs(), /configuration reload rejected, keeping the running configuration: [^"]*clusters\.0\.lb_policy/);
  t.is(sc.sidecar.currentConfig.clusters[0]!.lb_policy, 'round_robin');
  t.true(await roundTrip(sc.port('main'), 'bad-0'));

  // Through the file watcher.
  const event = nextReload(sc);
  sc.write({ ...cfg, listeners: [{ name: 'main', address: '127.0.0.1:0', cluster: 'missing' }] });
  const e = await event;
  t.false(e.ok);
  t.regex((e as { error: Error }).error.message, /listeners\.0\.cluster: no cluster named "missing"/);
  t.true(await roundTrip(sc.port('main'), 'bad-1'));

  // A valid config that cannot be applied (a listener address in use): nothing changes.
  const port = sc.port('main');
  await t.throwsAsync(
    sc.sidecar.applyConfig({
      ...cfg,
      listeners: [...(cfg['listeners'] as object[]), { name: 'clash', address: `127.0.0.1:${port}`, cluster: 'other' }],
      clusters: [...(cfg['clusters'] as object[]), { name: 'other', endpoints: [backends[1]!.uri] }],
    }),
    { code: 'ERR_SOCKGATE_ADDRESS_IN_USE' },
  );
  t.is(sc.sidecar.cluster('other'), undefined);
  t.is(sc.sidecar.listener('clash'), undefined);
  t.true(await roundTrip(sc.port('main'), 'bad-2'));
  t.is(sc.sidecar.reloads.rejected, 3);
  const text = await scrape(sc.sidecar.metricsUrl!);
  t.is(metricValue(text, 'sockgate_sidecar_reloads_total', { result: 'rejected' }), 3);
});

test.serial('dns cluster: endpoints follow the name as it is re-resolved; the system resolver works too', async (t) => {
  // Two backends on one port at two loopback addresses, as a DNS name with two A records would give.
  const a = await new Backend('dns-a', '127.0.0.2').start();
  const b = new Backend('dns-b', '127.0.0.3');
  b.port = a.port;
  await b.start();
  let answer = ['127.0.0.2'];
  const sc = await startSidecar(baseConfig(gw.target, { dns: { name: 'backend.test', port: a.port, refresh_ms: 100 } }), {
    // backend.test is ours; any other name goes to the system resolver.
    resolver: async (name, family) => (name === 'backend.test' ? answer : systemResolver(name, family)),
  });
  t.teardown(async () => {
    await sc.stop();
    await a.kill();
    await b.kill();
  });
  const cluster = sc.sidecar.cluster('main')!;
  t.deepEqual(cluster.endpointList().map((e) => e.uri), [`tcp://127.0.0.2:${a.port}`]);
  for (let i = 0; i < 4; i++) t.true(await roundTrip(sc.port('main'), `dns-${i}`));
  t.is(a.traffic, 4);
  answer = ['127.0.0.3', '127.0.0.2'];
  await waitUntil(() => cluster.endpointList().length === 2, 3_000, 'second address picked up');
  for (let i = 0; i < 4; i++) t.true(await roundTrip(sc.port('main'), `dns2-${i}`));
  t.deepEqual([a.traffic, b.traffic], [6, 2]);
  answer = [];
  await new Promise((r) => setTimeout(r, 300));
  t.is(cluster.endpointList().length, 2, 'an empty answer keeps the last good set');

  // The system resolver: localhost, IPv4 only.
  await sc.sidecar.applyConfig(baseConfig(gw.target, { dns: { name: 'localhost', port: backends[2]!.port, refresh_ms: 60_000, family: 4 } }));
  t.deepEqual(cluster.endpointList().map((e) => e.uri), [`tcp://127.0.0.1:${backends[2]!.port}`]);
  t.true(await roundTrip(sc.port('main'), 'dns-localhost'));
});
