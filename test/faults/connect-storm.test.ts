/**
 * A storm of 10,000 connections through the gateway (issue 16), opened as fast
 * as the SDK can, in a network namespace this test creates with a widened
 * ip_local_port_range (each request uses about three loopback connections, so
 * the default range would run out): no failure, every echo SHA-256-checked,
 * and afterwards the gateway holds the descriptors it held before and its RSS
 * is within 5% + 8 MiB of what it was. Skipped, saying why, without root or
 * `ip netns`.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./connect-storm-child.js', import.meta.url));
/** The child's own bound is 180 s of storm, a minute for kept records, settling; this is the test's. */
const TEST_TIMEOUT_MS = 330_000;
/** Ephemeral ports in the namespace: ~3 connections per request, TIME_WAIT kept 60 s. */
const PORT_RANGE = '1024 65535';

function sh(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

test('10,000 connections as fast as they come: no failure; gateway fds and RSS back to where they were', async (t) => {
  t.timeout(TEST_TIMEOUT_MS);
  if (process.getuid?.() !== 0) return t.pass(`skipped: needs root to create a network namespace (uid ${process.getuid?.()})`);
  const ns = `sockgate-storm-${process.pid}`;
  const add = sh('ip', ['netns', 'add', ns]);
  if (!add.ok) {
    t.log(`skipped: ip netns add failed: ${add.out}`);
    return t.pass();
  }
  t.teardown(() => void sh('ip', ['netns', 'del', ns]));
  const up = sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  const range = sh('ip', ['netns', 'exec', ns, 'sysctl', '-w', `net.ipv4.ip_local_port_range=${PORT_RANGE}`]);
  if (!up.ok || !range.ok) {
    t.log(`skipped: could not set up the namespace: ${up.out} ${range.out}`);
    return t.pass();
  }
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--experimental-websocket', CHILD], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d.slice(-4096)));
  const killer = setTimeout(() => child.kill('SIGKILL'), TEST_TIMEOUT_MS - 10_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(killer);
  t.is(code, 0, `storm child: ${err}`);
  const r = JSON.parse(out.trim().split('\n').pop()!) as {
    connections: number;
    ok: number;
    ms: number;
    failures: Record<string, number>;
    before: { fds: number; rss: number };
    after: { fds: number; rss: number };
    portRange: number[];
  };
  t.log(`${r.ok} of ${r.connections} in ${r.ms} ms (${Math.round((r.ok * 1000) / r.ms)}/s); gateway fds ${r.before.fds} -> ${r.after.fds}, RSS ${(r.before.rss / 2 ** 20).toFixed(1)} -> ${(r.after.rss / 2 ** 20).toFixed(1)} MiB; ports ${r.portRange.join('-')}`);
  t.deepEqual(r.portRange, PORT_RANGE.split(' ').map(Number), 'the storm ran in the namespace with the widened port range');
  t.deepEqual(r.failures, {});
  t.is(r.ok, r.connections);
  t.is(r.after.fds, r.before.fds, 'the gateway holds the descriptors it held before the storm');
  t.true(r.after.rss <= r.before.rss * 1.05 + 8 * 2 ** 20, `RSS ${r.after.rss} within 5% + 8 MiB of ${r.before.rss}`);
});
