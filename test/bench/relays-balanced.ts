/**
 * The relays family's balanced rows: `sockgate sidecar` (its native links,
 * over shm) against HAProxy's own `balance roundrobin`, both over the same two
 * backends, measured with iperf3 -P 2 (one test, two data streams).
 *
 * The two backends are two addresses (127.0.0.1 and 127.0.0.2) of one iperf3
 * server listening on every address: iperf3 opens a control connection and
 * then one per stream, and a per-connection balancer sends them to different
 * backends, which two separate iperf3 servers cannot join into one test. Both
 * balancers still pick between two endpoints per connection, as with any two
 * backends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI_PATH as CLI, within, type BenchContext } from './lib.js';

/** How long the sidecar may take to listen. */
const SIDECAR_START_MS = 20_000;
/** The two backend hosts (one iperf3 server listening on all addresses). */
export const BACKEND_HOSTS = ['127.0.0.1', '127.0.0.2'] as const;

export interface BalancedDeps {
  dir: string;
  freePort(): Promise<number>;
  listening(port: number): Promise<void>;
  start(cmd: string, args: string[]): ChildProcess;
}

/** HAProxy `balance roundrobin` over both backends; returns its front port and pid. */
export async function startHaproxyRoundRobin(d: BalancedDeps, backendPort: number): Promise<{ port: number; pid: number }> {
  const port = await d.freePort();
  const cfg = join(d.dir, 'haproxy-rr.cfg');
  writeFileSync(cfg, [
    'global', '  maxconn 1000', 'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
    'listen iperf-rr', `  bind 127.0.0.1:${port}`, '  balance roundrobin',
    ...BACKEND_HOSTS.map((h, i) => `  server s${i + 1} ${h}:${backendPort}`), '',
  ].join('\n'));
  const h = d.start('haproxy', ['-f', cfg, '-db']);
  await d.listening(port);
  return { port, pid: h.pid! };
}

/** `sockgate sidecar` with one round-robin cluster over both backends, through the gateway over shm. */
export async function startSidecarRoundRobin(d: BalancedDeps, gatewayTarget: string, backendPort: number): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const file = join(d.dir, 'sidecar-rr.yaml');
  writeFileSync(file, [
    `gateway: { target: "${gatewayTarget}", transports: [shm] }`,
    'telemetry: { metrics: "", log_level: info }',
    'shutdown: { drain_timeout_ms: 2000 }',
    'listeners:',
    '  - { name: iperf, address: "127.0.0.1:0", cluster: iperf }',
    'clusters:',
    `  - { name: iperf, endpoints: [${BACKEND_HOSTS.map((h) => `"tcp://${h}:${backendPort}"`).join(', ')}], lb_policy: round_robin }`,
    '',
  ].join('\n'));
  const child = spawn(process.execPath, [CLI, 'sidecar', '--config', file, '--no-watch'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TRACE: '' } });
  process.once('exit', () => child.kill('SIGKILL'));
  let logs = '';
  const onLog = (s: string) => (logs = (logs + s).slice(-65536));
  child.stdout!.setEncoding('utf8').on('data', onLog);
  child.stderr!.setEncoding('utf8').on('data', onLog);
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    await within(once(child, 'exit'), 10_000, 'sidecar exit').catch(() => child.kill('SIGKILL'));
  };
  const deadline = Date.now() + SIDECAR_START_MS;
  while (Date.now() < deadline && child.exitCode === null) {
    const m = /"listeners":\{"iperf":"127\.0\.0\.1:(\d+)"\}/.exec(logs);
    if (m && logs.includes('"msg":"sidecar started"')) return { port: Number(m[1]), pid: child.pid!, stop };
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`sidecar did not start within ${SIDECAR_START_MS} ms: ${logs.slice(-800)}`);
}

/** Log line for the sidecar / HAProxy ratio rows. */
export function logBalanced(ctx: BenchContext, name: string, sidecar: number | null, haproxy: number | null): number | null {
  if (sidecar === null || !haproxy) return null;
  const r = Math.round((100 * sidecar) / haproxy) / 100;
  ctx.log(`  ${name} sidecar-shm vs haproxy-rr (iperf3 -P 2, two backends): ${r}x (goal >= 1.0x)`);
  return r;
}
