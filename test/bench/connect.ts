/**
 * The `connect` family: a new connection per request (HTTP/1.0 style), each
 * with a small request and response, as fast as 1 client and 16 concurrent
 * clients can go: direct, through HAProxy (TCP mode), through `sockgate proxy
 * -L` over shm, tcp and grpc (a proxy child and a gateway child), and the SDK's
 * own connect() in the bench process against the same Node client's
 * net.connect() through HAProxy.
 *
 * Each request: connect, write REQ_BYTES, read the response (the SHA-256 of
 * the request: checked), the server closes. Rows: connections per second
 * (`conn_per_s`) and p50/p99 of connect() to the first response byte, with
 * ratios against HAProxy's row of the same run (`ratio_vs_haproxy`: conn/s,
 * `p50_ratio_vs_haproxy`: latency).
 *
 * The request/response server runs in its own process (this file with
 * `--server-child`) so the bench process is only the client.
 * Standalone: `node dist/test/bench/connect.js [--quick] [--reps N] [--only-paths a,b]`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Gateway as SdkGateway, SDK_TRANSPORTS } from '../../clients/sdk/gateway.js';
import type { TransportName } from '../../clients/sdk/socket.js';
import { startProxyChild } from './proxy.js';
import { median, percentile, round, startChildGateway, within, type BenchContext, type BenchFamily, type BenchRow, type ChildGateway, type LoopbackServer } from './lib.js';

/** Request size (a short RPC). */
const REQ_BYTES = 64;
/** Concurrency levels of the issue's table. */
const CONCURRENCY = [1, 16] as const;
/** Timed run per point, ms (full, quick). */
const RUN_MS = { full: 2_000, quick: 500 };
/** Warm-up per path before its timed runs, ms. */
const WARM_MS = 300;
/** One request may take at most this long (a stuck one fails the run, not the whole bench). */
const REQUEST_TIMEOUT_MS = 10_000;
/** Proxy planes (each a `sockgate proxy --transport` child). */
const PROXY_PLANES: readonly TransportName[] = ['shm', 'tcp', 'grpc'];
/** SDK planes (the SDK in this process). */
const SDK_PLANES: readonly TransportName[] = ['shm', 'tcp'];
/** How long the server child may take to say its port. */
const SERVER_START_MS = 10_000;
/** Connections HAProxy holds: far above 16 in flight, and 2 fds each stay under the 20k fd limit here. */
const HAPROXY_MAXCONN = 4_000;

const THIS_FILE = fileURLToPath(import.meta.url);

/** The expected response to `req`. */
const answer = (req: Buffer) => createHash('sha256').update(req).digest();

/** The request/response server, in a child process; resolves with its port. */
async function startServerChild(): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const child: ChildProcess = spawn(process.execPath, [THIS_FILE, '--server-child'], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => child.kill('SIGKILL'));
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const deadline = Date.now() + SERVER_START_MS;
  while (!/^\d+\n/.test(out)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`connect bench server did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port: Number(out.split('\n')[0]),
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await within(once(child, 'exit'), 5_000, 'server child exit').catch(() => child.kill('SIGKILL'));
    },
  };
}

/** The server child: read REQ_BYTES, answer their SHA-256, close. */
async function serverChild(): Promise<void> {
  const server = createServer({ noDelay: true } as Parameters<typeof createServer>[0], (c) => {
    c.on('error', () => {});
    let got: Buffer = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      got = got.length ? Buffer.concat([got, d]) : d;
      if (got.length >= REQ_BYTES) c.end(answer(got.subarray(0, REQ_BYTES)));
    });
  });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 });
  await once(server, 'listening');
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
  process.once('SIGTERM', () => process.exit(0));
}

/** One way to open a connection to the server. */
interface Path {
  transport: string;
  open(): Duplex;
  /** Processes in the middle (HAProxy; the proxy and the gateway), for CPU per connection. */
  pids: number[];
}

/** USER_HZ of /proc times. */
const USER_HZ = 100;

/** CPU ms (user + system) of `pids` so far. */
function cpuMs(pids: readonly number[]): number {
  let ms = 0;
  for (const pid of pids) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const v = f.slice(f.lastIndexOf(')') + 2).split(' ').map(Number);
      ms += ((v[11]! + v[12]!) * 1000) / USER_HZ;
    } catch {
      // gone
    }
  }
  return ms;
}

/** One request on a fresh connection: ms from open() to the first response byte; rejects on a wrong answer. */
function request(path: Path): Promise<number> {
  const req = randomBytes(REQ_BYTES);
  const want = answer(req);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = 0;
    let got: Buffer = Buffer.alloc(0);
    const s = path.open();
    const timer = setTimeout(() => done(new Error(`${path.transport}: no answer within ${REQUEST_TIMEOUT_MS} ms`)), REQUEST_TIMEOUT_MS);
    const done = (err?: Error) => {
      clearTimeout(timer);
      s.destroy();
      if (err) reject(err);
      else resolve(first - t0);
    };
    s.on('error', (e: Error) => done(e));
    s.on('data', (d: Buffer) => {
      if (!first) first = performance.now();
      got = got.length ? Buffer.concat([got, d]) : d;
    });
    s.on('end', () => (got.equals(want) ? done() : done(new Error(`${path.transport}: wrong answer (${got.length} bytes)`))));
    s.write(req);
  });
}

interface Run {
  /** CPU ms per connection: the processes in the middle, and this (client) process. */
  middleCpu: number;
  clientCpu: number;
  conns: number;
  ms: number;
  lat: number[];
  errors: number;
  firstError?: string;
}

/** `clients` loops of back-to-back requests for `ms`. */
async function runFor(path: Path, clients: number, ms: number): Promise<Run> {
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const c0 = cpuMs(path.pids);
  const u0 = process.cpuUsage();
  const start = performance.now();
  const end = start + ms;
  const worker = async () => {
    while (performance.now() < end) {
      try {
        lat.push(await request(path));
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
        if (errors > 100) return;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  const u = process.cpuUsage(u0);
  const n = Math.max(1, lat.length);
  return { middleCpu: (cpuMs(path.pids) - c0) / n, clientCpu: (u.user + u.system) / 1000 / n, conns: lat.length, ms: performance.now() - start, lat, errors, ...(firstError ? { firstError } : {}) };
}

function haveTool(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

async function startHaproxy(backend: number): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-connect-'));
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(
    cfg,
    ['global', `  maxconn ${HAPROXY_MAXCONN}`, 'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s', 'listen front', `  bind 127.0.0.1:${port}`, `  server s1 127.0.0.1:${backend}`, ''].join('\n'),
  );
  const h = spawn('haproxy', ['-f', cfg, '-db'], { stdio: 'ignore' });
  process.once('exit', () => h.kill('SIGKILL'));
  const deadline = Date.now() + SERVER_START_MS;
  for (;;) {
    const ok = await new Promise<boolean>((res) => {
      const s = netConnect({ port, host: '127.0.0.1' });
      s.once('connect', () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error('haproxy did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    pid: h.pid!,
    async stop() {
      h.kill('SIGTERM');
      await within(once(h, 'exit'), 5_000, 'haproxy exit').catch(() => h.kill('SIGKILL'));
    },
  };
}

const tcpPath = (transport: string, port: number, pids: number[] = []): Path => ({ transport, pids, open: () => netConnect({ host: '127.0.0.1', port, noDelay: true }) });

/** The SDK's connect() (createConnection: a socket at once, like net.connect). */
function sdkPath(sdk: SdkGateway, plane: TransportName, uri: string, gatewayPid: number): Path {
  return { transport: `sdk-${plane}`, pids: [gatewayPid], open: () => sdk.createConnection(uri, undefined, { transports: [plane], noDelay: true }) };
}

function rowOf(transport: string, clients: number, runs: Run[]): BenchRow {
  const rates = runs.map((r) => (r.conns * 1000) / r.ms);
  const p50 = runs.map((r) => percentile(Float64Array.from(r.lat).sort(), 50) * 1000);
  const p99 = runs.map((r) => percentile(Float64Array.from(r.lat).sort(), 99) * 1000);
  const errors = runs.reduce((a, r) => a + r.errors, 0);
  const firstError = runs.find((r) => r.firstError)?.firstError;
  return {
    name: `connect-c${clients}`,
    transport,
    size_bytes: REQ_BYTES,
    throughput_MBps: null,
    p50_us: round(median(p50)),
    p99_us: round(median(p99)),
    conn_per_s: round(median(rates), 0),
    runs_conn_per_s: rates.map((r) => round(r, 0)),
    runs_p50_us: p50.map((v) => round(v)),
    middle_cpu_ms_per_conn: round(median(runs.map((r) => r.middleCpu)), 3),
    client_cpu_ms_per_conn: round(median(runs.map((r) => r.clientCpu)), 3),
    errors,
    ...(firstError ? { first_error: firstError } : {}),
    family: 'connect',
    stat: `median of ${runs.length}`,
  };
}

/** Ratios against HAProxy's row with the same concurrency (sdk rows: the same Node client through HAProxy). */
export function addHaproxyRatios(rows: BenchRow[]): void {
  for (const r of rows) {
    const h = rows.find((b) => b.transport === 'haproxy' && b.name === r.name);
    if (!h || h === r) continue;
    const c = r['conn_per_s'];
    const hc = h['conn_per_s'];
    if (typeof c === 'number' && typeof hc === 'number' && hc > 0) r['ratio_vs_haproxy'] = round(c / hc, 3);
    if (r.p50_us !== null && h.p50_us) r['p50_ratio_vs_haproxy'] = round(r.p50_us / h.p50_us, 2);
  }
}

export const connectFamily: BenchFamily = {
  name: 'connect',
  description: 'a new connection per 64 B request/response, 1 and 16 clients: direct, HAProxy, proxy -L (shm/tcp/grpc), SDK connect(); conn/s and connect-to-first-byte',
  async run(ctx) {
    const runMs = ctx.quick ? RUN_MS.quick : RUN_MS.full;
    const only = (process.env['BENCH_CONNECT_PATHS'] ?? '').split(',').filter(Boolean);
    const want = (t: string) => !only.length || only.includes(t);
    const server = await startServerChild();
    const uri = `tcp://127.0.0.1:${server.port}`;
    const stops: (() => Promise<void>)[] = [server.stop];
    const sdks: SdkGateway[] = [];
    try {
      const paths: Path[] = [];
      if (want('direct')) paths.push(tcpPath('direct', server.port));
      if (haveTool('haproxy')) {
        const h = await startHaproxy(server.port);
        stops.push(h.stop);
        paths.push(tcpPath('haproxy', h.port, [h.pid]));
      } else ctx.log('  haproxy: skipped: haproxy is not installed (no ratios)');
      const gw = await ctx.startGateway({ label: 'gateway-connect' });
      ctx.log(`  ${gw.label}: pid ${gw.pid}, control ${gw.target}`);
      // The proxy child takes two -L targets (a sink and an echo server); both are the request server here.
      const target = { uri, port: server.port } as LoopbackServer;
      for (const plane of PROXY_PLANES) {
        if (!want(`proxy-${plane}`)) continue;
        if (!SDK_TRANSPORTS.includes(plane)) {
          ctx.log(`  proxy-${plane}: skipped: the SDK cannot attach with ${plane} here`);
          continue;
        }
        const p = await startProxyChild(plane, gw.target, target, target);
        stops.push(p.stop);
        ctx.log(`  proxy-${plane}: pid ${p.pid}`);
        paths.push(tcpPath(`proxy-${plane}`, Number(p.listenFor.get(uri)!.split(':').pop()), [p.pid, gw.pid]));
      }
      for (const plane of SDK_PLANES) {
        if (!want(`sdk-${plane}`) || !SDK_TRANSPORTS.includes(plane)) continue;
        const sdk = await SdkGateway.connect(gw.target, { transports: [plane] }, { deadlineMs: 15_000 });
        sdks.push(sdk);
        paths.push(sdkPath(sdk, plane, uri, gw.pid));
      }
      const runs = new Map<string, Run[]>();
      for (const p of paths) await runFor(p, 1, WARM_MS);
      for (let r = 0; r < ctx.reps; r++) {
        for (const clients of CONCURRENCY) {
          // Interleaved: a slow moment of the machine hits every path alike.
          for (const p of paths) {
            const res = await runFor(p, clients, runMs);
            const key = `${p.transport}/${clients}`;
            runs.set(key, [...(runs.get(key) ?? []), res]);
            const sorted = Float64Array.from(res.lat).sort();
            ctx.log(
              `  connect c${clients} ${p.transport.padEnd(10)} run ${r + 1}/${ctx.reps}: ${((res.conns * 1000) / res.ms).toFixed(0)} conn/s, p50 ${(percentile(sorted, 50) * 1000).toFixed(0)} µs, p99 ${(percentile(sorted, 99) * 1000).toFixed(0)} µs; cpu/conn middle ${res.middleCpu.toFixed(2)} ms, client ${res.clientCpu.toFixed(2)} ms${res.errors ? `, ${res.errors} errors (${res.firstError})` : ''}`,
            );
          }
        }
      }
      const rows: BenchRow[] = [];
      for (const clients of CONCURRENCY) for (const p of paths) rows.push(rowOf(p.transport, clients, runs.get(`${p.transport}/${clients}`)!));
      addHaproxyRatios(rows);
      for (const r of rows) {
        ctx.log(`  ${r.name} ${r.transport.padEnd(10)} ${String(r['conn_per_s']).padStart(6)} conn/s (${r['ratio_vs_haproxy'] ?? '-'}x haproxy), p50 ${r.p50_us} µs (${r['p50_ratio_vs_haproxy'] ?? '-'}x), p99 ${r.p99_us} µs; cpu/conn middle ${r['middle_cpu_ms_per_conn']} ms, client ${r['client_cpu_ms_per_conn']} ms; runs ${JSON.stringify(r['runs_conn_per_s'])} conn/s`);
      }
      return rows;
    } finally {
      for (const s of sdks) s.close();
      for (const stop of stops.reverse()) await stop().catch(() => {});
    }
  },
};

function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === THIS_FILE;
  } catch {
    return false;
  }
}

async function standalone(argv: string[]): Promise<void> {
  const quick = argv.includes('--quick');
  const repsAt = argv.indexOf('--reps');
  const reps = repsAt >= 0 ? Number(argv[repsAt + 1]) : quick ? 1 : 3;
  const flagsAt = argv.indexOf('--gateway-flags');
  const nodeFlags = flagsAt >= 0 ? argv[flagsAt + 1]!.split(/\s+/).filter(Boolean) : [];
  const gateways: ChildGateway[] = [];
  const ctx = {
    quick,
    reps,
    sizes: undefined,
    reference: false,
    profileDir: undefined,
    log: (m: string) => process.stderr.write(`${m}\n`),
    async startGateway(opts = {}) {
      const g = await startChildGateway({ ...opts, nodeFlags: [...(opts.nodeFlags ?? []), ...nodeFlags] });
      gateways.push(g);
      return g;
    },
  } as BenchContext;
  try {
    const rows = await connectFamily.run(ctx);
    for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n');
  } finally {
    await Promise.all(gateways.map((g) => g.stop()));
  }
}

if (isMain()) {
  const argv = process.argv.slice(2);
  if (argv[0] === '--server-child') await serverChild();
  else
    standalone(argv).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`bench connect: ${(err as Error).stack ?? String(err)}\n`);
        process.exit(1);
      },
    );
}
