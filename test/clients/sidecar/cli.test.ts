/**
 * `sockgate sidecar --config <file>` as a real child process: --check names a
 * bad key and exits 2; a running sidecar proxies through the gateway, reloads
 * on SIGHUP, and on SIGTERM stops accepting, lets an open connection finish,
 * and exits 0.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { startGateway, within, type TestGateway } from '../../helpers/harness.js';
import { baseConfig, openLong, roundTrip, startBackends, streamUntil, waitUntil, type Backend } from './helpers.js';

const ENTRY = fileURLToPath(new URL('./cli-entry.js', import.meta.url));

let gw: TestGateway;
let backends: Backend[];
let dir: string;

test.before(async () => {
  gw = await startGateway();
  backends = await startBackends(2);
  dir = mkdtempSync(join(tmpdir(), 'sockgate-sidecar-cli-'));
});

test.after.always(async () => {
  await Promise.all(backends.map((b) => b.kill()));
  await gw.stop();
  rmSync(dir, { recursive: true, force: true });
});

function run(args: string[]): { child: ChildProcess; output: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [ENTRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TRACE: '' } });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (out += s));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exit };
}

test.serial('--check: a bad config exits 2 naming the key; a good one exits 0', async (t) => {
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, stringify(baseConfig(gw.target, { endpoints: ['tcp://127.0.0.1:1'], circuit_breakers: { max_conections: 5 } })));
  const r1 = run(['sidecar', '--config', bad, '--check']);
  t.is(await within(r1.exit, 20_000, 'check exit'), 2);
  t.regex(r1.output(), /clusters\.0\.circuit_breakers\.max_conections: unknown key/);
  const good = join(dir, 'good.yaml');
  writeFileSync(good, stringify(baseConfig(gw.target, { endpoints: ['tcp://127.0.0.1:1'] })));
  const r2 = run(['sidecar', '--config', good, '--check']);
  t.is(await within(r2.exit, 20_000, 'check exit'), 0);
  t.regex(r2.output(), /ok \(1 listeners, 1 clusters\)/);
});

test.serial('runs, reloads on SIGHUP, drains on SIGTERM and exits 0', async (t) => {
  t.timeout(60_000);
  const file = join(dir, 'run.yaml');
  const cfg = baseConfig(gw.target, { endpoints: [backends[0]!.uri] });
  (cfg['shutdown'] as { drain_timeout_ms: number }).drain_timeout_ms = 10_000;
  writeFileSync(file, stringify(cfg));
  const r = run(['sidecar', '--config', file, '--no-watch']);
  t.teardown(() => {
    if (r.child.exitCode === null) r.child.kill('SIGKILL');
  });
  let port = 0;
  await waitUntil(
    () => {
      const m = /"msg":"sidecar started"/.test(r.output()) && /"listeners":\{"main":"127\.0\.0\.1:(\d+)"\}/.exec(r.output());
      if (m) port = Number(m[1]);
      return port > 0 || r.child.exitCode !== null;
    },
    20_000,
    'sidecar child started',
  );
  t.true(port > 0, r.output());
  t.true(await roundTrip(port, 'cli-0'));
  t.is(backends[0]!.traffic, 1);

  // SIGHUP: move the cluster to backend 1.
  writeFileSync(file, stringify({ ...cfg, clusters: [{ name: 'main', endpoints: [backends[1]!.uri] }] }));
  r.child.kill('SIGHUP');
  await waitUntil(() => /configuration reloaded/.test(r.output()), 10_000, 'reload logged');
  t.true(await roundTrip(port, 'cli-1'));
  t.is(backends[1]!.traffic, 1);

  // SIGTERM with a connection open: no new connections, the open one finishes, exit 0.
  const long = await openLong(port, 'cli-long');
  r.child.kill('SIGTERM');
  await waitUntil(() => /draining open connections/.test(r.output()), 10_000, 'drain logged');
  const s = netConnect(port, '127.0.0.1');
  const err = await within(once(s, 'error').then(([e]) => e as NodeJS.ErrnoException), 5_000, 'refused while draining');
  t.is(err.code, 'ECONNREFUSED');
  t.is(r.child.exitCode, null, 'still running while the connection is open');
  const res = await streamUntil(long, () => false, { maxChunks: 16 });
  t.true(res.ok, 'the open connection finished intact during the drain');
  t.is(await within(r.exit, 10_000, 'exit after drain'), 0);
  t.regex(r.output(), /sidecar stopped/);
});
