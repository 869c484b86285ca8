/**
 * The connect storm's body (connect-storm.test.ts runs it inside a network
 * namespace of its own with `ip netns exec`): a child gateway, an echo server,
 * and STORM_CONNECTIONS SDK connections opened as fast as STORM_CONCURRENCY
 * loops can, each echoing a small SHA-256-checked payload to its end. Prints one
 * JSON line: failures (by message), the gateway's fds and RSS before and after.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { Gateway } from '../../clients/sdk/gateway.js';
import { echoServer, startChildGateway } from '../helpers/harness.js';

/** The storm. */
const STORM_CONNECTIONS = Number(process.env['STORM_CONNECTIONS'] ?? 10_000);
/** Loops opening connections back to back (under the SDK's 128 connects in flight). */
const STORM_CONCURRENCY = 32;
/** Connections before the "before" snapshot: lazily made state (pumps, pools, JIT) exists by then. */
const WARMUP_CONNECTIONS = 200;
/** The whole storm must end within this (the test's own bound is above it). */
const STORM_DEADLINE_MS = 180_000;
/** After the storm, how long the gateway may take to let go of its sockets (TIME_WAIT is the kernel's, not an fd). */
const SETTLE_MS = 20_000;
/**
 * Closed sockets' info (socket-table.ts TOMBSTONE_MS) and spent tokens (attach.ts SPENT_MEMORY_MS) are
 * kept a minute on purpose, bounded in count: the "after" snapshot waits them out, then one more
 * connection evicts them, and both snapshots follow a full GC of the gateway (over its inspector).
 */
const RECORDS_KEPT_MS = 61_000;

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const rssBytes = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function main(): Promise<void> {
  const echo = await echoServer();
  // The gateway's inspector, on loopback in this namespace: only to ask it for a full GC before each snapshot.
  process.env['NODE_OPTIONS'] = '--inspect=127.0.0.1:0';
  const g = await startChildGateway('telemetry: { log_level: warn, traces: none }\n');
  delete process.env['NODE_OPTIONS'];
  const pid = g.child.pid!;
  const gc = () => collectGarbage(g.logs());
  const sdk = await Gateway.connect(g.target, { transports: ['tcp'] });
  const failures = new Map<string, number>();
  let ok = 0;
  const one = async () => {
    const s = await sdk.connect(echo.uri);
    const payload = randomBytes(64 + Math.floor(Math.random() * 1024));
    const h = createHash('sha256');
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => h.update(c));
      s.once('end', () => resolve());
      s.once('error', reject);
      s.end(payload);
    });
    s.destroy();
    if (h.digest('hex') !== sha(payload)) throw new Error('echo differs');
  };
  const run = async (n: number, deadline: number) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: STORM_CONCURRENCY }, async () => {
        for (let i = next++; i < n && Date.now() < deadline; i = next++) {
          try {
            await one();
            ok++;
          } catch (err) {
            const k = `${(err as { code?: string }).code}: ${(err as Error).message.replace(/t[0-9a-z]+-[0-9a-z]+/g, '<id>')}`;
            failures.set(k, (failures.get(k) ?? 0) + 1);
          }
        }
      }),
    );
  };
  await run(WARMUP_CONNECTIONS, Date.now() + STORM_DEADLINE_MS);
  const settle = async (want: number) => {
    const until = Date.now() + SETTLE_MS;
    while (fds(pid) > want && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  };
  await settle(0);
  // Descriptors first: the GC's inspector connection is one until it has closed.
  const fdsBefore = fds(pid);
  await gc();
  const before = { fds: fdsBefore, rss: rssBytes(pid) };
  ok = 0;
  failures.clear();
  const t0 = Date.now();
  await run(STORM_CONNECTIONS, t0 + STORM_DEADLINE_MS);
  const ms = Date.now() - t0;
  const stormOk = ok;
  await settle(before.fds);
  const fdsAfter = fds(pid);
  await new Promise((r) => setTimeout(r, RECORDS_KEPT_MS));
  await run(1, Date.now() + STORM_DEADLINE_MS);
  await settle(before.fds);
  await gc();
  const after = { fds: fdsAfter, rss: rssBytes(pid) };
  sdk.close();
  g.child.kill('SIGTERM');
  await echo.close();
  const portRange = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  process.stdout.write(`${JSON.stringify({ connections: STORM_CONNECTIONS, ok: stormOk, ms, failures: Object.fromEntries(failures), before, after, portRange })}\n`);
}

/** A full GC in the gateway through its inspector (HeapProfiler.collectGarbage); needs --experimental-websocket. */
async function collectGarbage(logs: string): Promise<void> {
  const url = /Debugger listening on (ws:\/\/\S+)/.exec(logs)?.[1];
  if (!url) throw new Error('the gateway inspector did not say its address');
  const Ws = (globalThis as unknown as { WebSocket: new (u: string) => { onopen: () => void; onmessage: (e: { data: string }) => void; onerror: (e: unknown) => void; send(d: string): void; close(): void } }).WebSocket;
  await new Promise<void>((resolve, reject) => {
    const ws = new Ws(url);
    const timer = setTimeout(() => reject(new Error('inspector GC: no answer in 30 s')), 30_000);
    ws.onerror = (e) => reject(new Error(`inspector: ${String((e as { message?: string }).message ?? e)}`));
    ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
    ws.onmessage = (e) => {
      if ((JSON.parse(e.data) as { id?: number }).id !== 1) return;
      clearTimeout(timer);
      ws.close();
      resolve();
    };
  });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`storm: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
