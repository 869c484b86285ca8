/**
 * kill -9 of the guest proxy (`sockgate proxy -L`, one per data plane) and of
 * the sidecar (`sockgate sidecar`) mid-transfer: every client connection
 * through them is cut (reset or closed, never left hanging), and the gateway
 * frees everything they held: its descriptor count returns to the baseline
 * taken after a warm-up through the same kind of relay.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { echoServer, hashUntilEnd, startChildGateway, within, type ChildGateway } from '../helpers/harness.js';
import { baseConfig, TRAFFIC_PREFIX } from '../clients/sidecar/helpers.js';
import { ending, fdCount, settle, startCli, type CliChild, type Ending } from './helpers.js';

/** Client connections through each relay when it is killed. */
const CONNECTIONS = 12;
/** Bound on the gateway noticing a dead relay and freeing its sockets. */
const FREE_WITHIN_MS = 20_000;

const PLANES = shmSupport.available ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'];

async function dial(port: number): Promise<Socket> {
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  await within(once(s, 'connect'), 5_000, `connect 127.0.0.1:${port}`);
  return s;
}

/** One complete echo exchange through `port` (SHA-256 both ways). */
async function roundTrip(t: { is(a: unknown, b: unknown, m?: string): void }, port: number, what: string): Promise<void> {
  const s = await dial(port);
  const got = hashUntilEnd(s);
  s.write(`${TRAFFIC_PREFIX}warm\n`);
  const prefix = Buffer.from(`${TRAFFIC_PREFIX}warm\n`);
  const { createHash } = await import('node:crypto');
  const body = randomBytes(256 * 1024);
  s.end(body);
  const r = await within(got, 20_000, `${what}: round trip`);
  t.is(r.sha256, createHash('sha256').update(Buffer.concat([prefix, body])).digest('hex'), `${what}: echo intact`);
  s.destroy();
}

/** Open `n` connections through `port` that stream until cut; resolves once bytes came back on each. */
async function streaming(port: number, n: number): Promise<{ socks: Socket[]; endings: Promise<Ending>[] }> {
  const socks: Socket[] = [];
  const endings: Promise<Ending>[] = [];
  const echoed: number[] = [];
  const block = randomBytes(64 * 1024);
  for (let i = 0; i < n; i++) {
    const s = await dial(port);
    endings.push(ending(s));
    echoed.push(0);
    s.on('data', (c: Buffer) => (echoed[i]! += c.length));
    s.write(`${TRAFFIC_PREFIX}c${i}\n`);
    void (async () => {
      for (let k = 0; k < 20_000 && !s.destroyed && s.writable; k++) {
        if (!s.write(block)) {
          await new Promise<void>((r) => {
            const done = () => (s.off('drain', done), s.off('close', done), r());
            s.on('drain', done);
            s.on('close', done);
          });
        }
      }
    })();
  }
  await within(
    (async () => {
      while (echoed.some((e) => e < 128 * 1024)) await new Promise((r) => setTimeout(r, 50));
    })(),
    30_000,
    'bytes echoed on every connection',
  );
  return { socks, endings };
}

async function gatewayBaseline(g: ChildGateway): Promise<number> {
  // Steady first: nothing the warm-up opened may still be closing.
  let prev = -1;
  return settle(
    () => {
      const n = fdCount(g.child.pid!);
      const same = n === prev;
      prev = n;
      return same ? n : -1;
    },
    (n) => n >= 0,
    10_000,
  ).then((n) => (n >= 0 ? n : fdCount(g.child.pid!)));
}

async function killAndCheck(t: ExecutionContext, g: ChildGateway, relays: { cli: CliChild; port: number; what: string }[], baseline: number): Promise<void> {
  const all = await Promise.all(relays.map((r) => streaming(r.port, CONNECTIONS)));
  const during = fdCount(g.child.pid!);
  t.true(during > baseline, `the gateway holds the relayed sockets (${during} fds vs baseline ${baseline})`);
  await Promise.all(relays.map((r) => r.cli.kill()));
  const endings = await within(Promise.all(all.flatMap((a) => a.endings)), 15_000, 'every client connection to be cut');
  const how = new Map<string, number>();
  for (const e of endings) {
    const key = e.error ? (e.error.code ?? e.error.message) : e.ended ? 'end' : 'close';
    how.set(key, (how.get(key) ?? 0) + 1);
  }
  t.log(`${relays.map((r) => r.what).join(', ')}: client connections ended:`, Object.fromEntries(how));
  t.is(endings.length, relays.length * CONNECTIONS);
  // The clients keep writing: a cut shows as a reset or a broken pipe, never as a quiet end.
  t.true(endings.every((e) => e.error !== undefined), 'every client connection saw an error');
  // At most the baseline: under load a warm-up socket may still have been closing when the baseline
  // was read, so the count can end below it; above it means the kill leaked something.
  const after = await settle(() => fdCount(g.child.pid!), (n) => n <= baseline, FREE_WITHIN_MS);
  t.true(after <= baseline, `the gateway's descriptors return to the baseline ${baseline} after the kill: ${after} (${during} during the transfers)`);
  t.is(g.child.exitCode, null, 'the gateway is still running');
}

test('kill -9 of the proxy (-L, each plane) mid-transfer: clients are cut, the gateway frees everything', async (t) => {
  t.timeout(120_000);
  const echo = await echoServer();
  const g = await startChildGateway();
  const started: CliChild[] = [];
  t.teardown(async () => {
    for (const c of started) await c.kill();
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const startProxy = async (plane: string) => {
    const p = await startCli(['proxy', '-g', g.target, '-L', `127.0.0.1:0=${echo.uri}`, '--transport', plane, '--log-level', 'warn'], /"listen":"127\.0\.0\.1:(\d+)"/);
    started.push(p);
    return { cli: p, port: Number(p.match[1]), what: `proxy over ${plane}` };
  };
  // Warm-up: one proxy per plane carries a transfer, then stops gracefully; what the gateway keeps after that is the baseline.
  for (const plane of PLANES) {
    const w = await startProxy(plane);
    await roundTrip(t, w.port, w.what);
    w.cli.child.kill('SIGTERM');
    await within(once(w.cli.child, 'exit'), 10_000, 'warm-up proxy exit');
  }
  const baseline = await gatewayBaseline(g);
  const relays = [];
  for (const plane of PLANES) relays.push(await startProxy(plane));
  await killAndCheck(t, g, relays, baseline);
});

test('kill -9 of the sidecar mid-transfer: clients are cut, the gateway frees everything', async (t) => {
  t.timeout(120_000);
  const echo = await echoServer();
  const g = await startChildGateway();
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-faults-sidecar-'));
  const started: CliChild[] = [];
  t.teardown(async () => {
    for (const c of started) await c.kill();
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const startSidecar = async (plane: string, i: number) => {
    const cfg = baseConfig(g.target, { endpoints: [echo.uri] });
    (cfg['gateway'] as { transports: string[] }).transports = [plane];
    (cfg['telemetry'] as Record<string, unknown>)['log_level'] = 'info';
    const file = join(dir, `sidecar-${plane}-${i}.yaml`);
    writeFileSync(file, stringify(cfg));
    const c = await startCli(['sidecar', '--config', file, '--no-watch'], /"main":"127\.0\.0\.1:(\d+)"/);
    started.push(c);
    return { cli: c, port: Number(c.match[1]), what: `sidecar over ${plane}` };
  };
  for (const plane of PLANES) {
    const w = await startSidecar(plane, 0);
    await roundTrip(t, w.port, w.what);
    w.cli.child.kill('SIGTERM');
    await within(once(w.cli.child, 'exit'), 15_000, 'warm-up sidecar exit');
  }
  const baseline = await gatewayBaseline(g);
  const relays = [];
  for (const plane of PLANES) relays.push(await startSidecar(plane, 1));
  await killAndCheck(t, g, relays, baseline);
});
