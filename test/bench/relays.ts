/**
 * The `relays` family: real tools through real relays, side by side in one
 * run. iperf3 in both directions (-R: server to client) and sockperf TCP
 * ping-pong (64 B; sockperf reports latency as half the round trip), each:
 * direct, through HAProxy (TCP mode, one relay), through socat -> Unix
 * socket -> socat (two relays, the vsock-proxy shape), and through
 * `sockgate proxy -L` over shm, tcp and grpc (a child proxy and a child
 * gateway). Each row also has the ratio to HAProxy's row of the same run and
 * the CPU per GB of the processes in the middle (throughput rows); `idle-links`
 * rows give the CPU of the proxy and the gateway (and HAProxy) with 1,000 idle
 * connections open through them.
 *
 * A missing tool (haproxy, iperf3, sockperf, socat) is printed and only its
 * rows are skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SDK_TRANSPORTS } from '../../clients/sdk/gateway.js';
import type { TransportName } from '../../clients/sdk/socket.js';
import { startProxyChild } from './proxy.js';
import { median, round, within, type BenchContext, type BenchFamily, type BenchRow, type LoopbackServer } from './lib.js';
import { logBalanced, startHaproxyRoundRobin, startSidecarRoundRobin } from './relays-balanced.js';
import { transparentRows } from './relays-transparent.js';

/** Seconds per iperf3 / sockperf run (full, quick). */
const RUN_S = { full: 3, quick: 1 };
/** sockperf message size (the issue's table is at 64 B). */
const PING_BYTES = 64;
/** Proxy planes, each a `sockgate proxy --transport` child. */
const PLANES: readonly TransportName[] = ['shm', 'tcp', 'grpc'];
/** How long a tool run may take beyond its own duration. */
const TOOL_GRACE_MS = 20_000;
/** Idle connections for the idle-CPU rows (the issue's figure), fewer with --quick. */
const IDLE_LINKS = { full: 1000, quick: 200 };
/** Idle connections opened at once (under limits.max_pending_sockets_per_identity and the data port's per-peer limit). */
const IDLE_BATCH = 100;
/** How long one batch of idle links may take to echo. */
const IDLE_BATCH_MS = 30_000;
/** Let idle links settle (attach, first rounds) before measuring. */
const IDLE_SETTLE_MS = 2_000;
/** How long idle CPU is measured (a third with --quick). */
const IDLE_MEASURE_MS = 3_000;
/** iperf3 streams on the balanced rows (each a connection, so both backends carry one). */
const BALANCED_STREAMS = 2;
/** USER_HZ of /proc times. */
const USER_HZ = 100;

function have(tool: string): boolean {
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

/** CPU ms of processes (utime+stime plus reaped children: socat forks one per connection). */
function cpuMs(pids: readonly number[]): number {
  let ms = 0;
  for (const pid of pids) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const v = f.slice(f.lastIndexOf(')') + 2).split(' ').map(Number);
      ms += ((v[11]! + v[12]! + v[13]! + v[14]!) * 1000) / USER_HZ;
    } catch {
      // gone
    }
  }
  return ms;
}

/** Run a tool to completion; resolves with its stdout (rejects on a non-zero exit). */
async function run(cmd: string, args: string[], ms: number): Promise<string> {
  const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  c.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  c.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  try {
    const [code] = (await within(once(c, 'exit'), ms, `${cmd} ${args.join(' ')}`)) as [number | null];
    if (code !== 0) throw new Error(`${cmd} exited ${code}: ${(err || out).slice(-400)}`);
  } finally {
    if (c.exitCode === null) c.kill('SIGKILL');
  }
  return out;
}

/** Long-running helpers (servers, relays), killed at the end. */
class Procs {
  readonly list: ChildProcess[] = [];
  start(cmd: string, args: string[]): ChildProcess {
    const c = spawn(cmd, args, { stdio: 'ignore' });
    c.on('error', () => {});
    this.list.push(c);
    process.once('exit', () => c.kill('SIGKILL'));
    return c;
  }
  async stop(): Promise<void> {
    for (const c of this.list) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.all(this.list.map((c) => (c.exitCode === null && c.signalCode === null ? within(once(c, 'exit'), 5_000, 'exit').catch(() => c.kill('SIGKILL')) : undefined)));
  }
}

/** Wait until something accepts on the port. */
async function listening(port: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((res) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('connect', () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port} after ${ms} ms`);
}

interface RelayPath {
  name: string;
  /** Front ports for iperf3 and sockperf. */
  iperf: number;
  sockperf: number;
  pids: number[];
  /** iperf3 -P (balanced rows). */
  streams?: number;
  /** Only iperf3 rows (the balanced paths have no sockperf backend). */
  iperfOnly?: boolean;
}

async function iperfRow(ctx: BenchContext, p: RelayPath, reverse: boolean, secs: number): Promise<BenchRow> {
  const gbps: number[] = [];
  const cpuPerGB: number[] = [];
  const errors: string[] = [];
  for (let i = 0; i < ctx.reps; i++) {
    const c0 = cpuMs(p.pids);
    let out: string;
    try {
      out = await run('iperf3', ['-c', '127.0.0.1', '-p', String(p.iperf), '-t', String(secs), '-J', ...(reverse ? ['-R'] : []), ...(p.streams ? ['-P', String(p.streams)] : [])], secs * 1000 + TOOL_GRACE_MS);
    } catch (err) {
      out = JSON.stringify({ error: (err as Error).message });
    }
    const c1 = cpuMs(p.pids);
    const j = JSON.parse(out) as { error?: string; end?: { sum_received?: { bits_per_second: number; bytes: number } } };
    const sum = j.end?.sum_received;
    if (!sum) {
      // A failed run is reported, not averaged in (and does not end the family).
      errors.push(j.error ?? 'no result');
      continue;
    }
    gbps.push(sum.bits_per_second / 1e9);
    if (p.pids.length) cpuPerGB.push((c1 - c0) / (sum.bytes / 1e9));
  }
  if (!gbps.length) {
    ctx.log(`  ${p.name} iperf3${reverse ? ' -R' : ''}: failed: ${errors.join('; ')}`);
    return { name: reverse ? 'iperf3-down' : 'iperf3-up', transport: p.name, size_bytes: 0, throughput_MBps: null, p50_us: null, p99_us: null, error: errors.join('; '), family: 'relays' };
  }
  if (errors.length) ctx.log(`  ${p.name} iperf3${reverse ? ' -R' : ''}: ${errors.length} run(s) failed: ${errors.join('; ')}`);
  const g = median(gbps);
  ctx.log(`  ${p.name} iperf3${reverse ? ' -R' : ''}: ${g.toFixed(2)} Gbit/s`);
  return {
    name: reverse ? 'iperf3-down' : 'iperf3-up',
    transport: p.name,
    size_bytes: 0,
    throughput_MBps: round((g * 1e9) / 8 / 1e6),
    p50_us: null,
    p99_us: null,
    gbit_s: round(g, 2),
    relay_cpu_ms_per_GB: cpuPerGB.length ? round(median(cpuPerGB)) : null,
    family: 'relays',
    stat: `median of ${ctx.reps}`,
  };
}

async function sockperfRow(ctx: BenchContext, p: RelayPath, secs: number): Promise<BenchRow> {
  const p50: number[] = [];
  const p99: number[] = [];
  for (let i = 0; i < ctx.reps; i++) {
    const out = await run('sockperf', ['ping-pong', '--tcp', '-i', '127.0.0.1', '-p', String(p.sockperf), '-t', String(secs), '-m', String(PING_BYTES)], secs * 1000 + TOOL_GRACE_MS);
    const pct = (q: string) => Number(new RegExp(`percentile ${q} =\\s+([0-9.]+)`).exec(out)?.[1] ?? NaN);
    p50.push(pct('50.000'));
    p99.push(pct('99.000'));
  }
  ctx.log(`  ${p.name} sockperf: p50 ${median(p50).toFixed(1)} us, p99 ${median(p99).toFixed(1)} us (half round trip)`);
  return { name: 'sockperf-pingpong', transport: p.name, size_bytes: PING_BYTES, throughput_MBps: null, p50_us: round(median(p50)), p99_us: round(median(p99)), family: 'relays', stat: `median of ${ctx.reps}` };
}

/**
 * CPU of the processes in the middle with `n` idle connections open through
 * the path to an echo server in this process: idle links should cost nothing
 * (no timers, no wake-ups). Connections open in batches (under the gateway's
 * pending-socket limits) and each batch waits for a one-byte echo, so every
 * link is set up end to end before measuring; the sockperf server cannot hold
 * 1,000 connections (connects time out), and links failing and retrying during
 * the measurement were what cost CPU. Reported per process, % of one core.
 */
async function idleRow(ctx: BenchContext, p: RelayPath, port: number, n: number, names: string[]): Promise<BenchRow> {
  const socks: Socket[] = [];
  let closed = 0;
  try {
    for (let i = 0; i < n; i += IDLE_BATCH) {
      const batch: Socket[] = [];
      for (let j = i; j < Math.min(n, i + IDLE_BATCH); j++) {
        const s = connect({ port, host: '127.0.0.1' });
        s.on('error', () => {});
        s.once('close', () => closed++);
        s.write('x');
        batch.push(s);
      }
      socks.push(...batch);
      await within(Promise.all(batch.map((x) => Promise.race([once(x, 'data'), once(x, 'close')]))), IDLE_BATCH_MS, `${p.name}: idle links set up`);
    }
    await new Promise((r) => setTimeout(r, IDLE_SETTLE_MS));
    const t0 = performance.now();
    const c0 = p.pids.map((pid) => cpuMs([pid]));
    await new Promise((r) => setTimeout(r, ctx.quick ? IDLE_MEASURE_MS / 3 : IDLE_MEASURE_MS));
    const wall = performance.now() - t0;
    const pct = p.pids.map((pid, i) => round((100 * (cpuMs([pid]) - c0[i]!)) / wall, 2));
    const open = n - closed;
    const fields = Object.fromEntries(names.map((nm, i) => [`${nm}_cpu_pct`, pct[i]]));
    ctx.log(`  ${p.name}: ${open} of ${n} idle connections open: ${names.map((nm, i) => `${nm} ${pct[i]}% of a core`).join(', ')}`);
    return { name: 'idle-links', transport: p.name, size_bytes: 0, throughput_MBps: null, p50_us: null, p99_us: null, connections: open, ...fields, family: 'relays', ...(open < n ? { error: `${n - open} of ${n} connections closed` } : {}) };
  } finally {
    for (const s of socks) s.destroy();
  }
}

export const relaysFamily: BenchFamily = {
  name: 'relays',
  description: 'iperf3 both ways and sockperf ping-pong: direct, HAProxy, socat->UDS->socat, sockgate proxy -L over shm/tcp/grpc (ratios vs HAProxy), transparent mode vs -L in a netns',
  skip() {
    const missing = ['iperf3', 'sockperf'].filter((t) => !have(t));
    return missing.length === 2 ? 'neither iperf3 nor sockperf is installed (apt-get install iperf3 sockperf)' : undefined;
  },
  async run(ctx) {
    const secs = ctx.quick ? RUN_S.quick : RUN_S.full;
    const tools = { iperf3: have('iperf3'), sockperf: have('sockperf'), haproxy: have('haproxy'), socat: have('socat') };
    for (const [t, ok] of Object.entries(tools)) if (!ok) ctx.log(`  relays: ${t} is not installed: its rows are skipped`);
    const procs = new Procs();
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-relays-'));
    const stops: (() => Promise<void>)[] = [];
    const deps = { dir, freePort, listening, start: (cmd: string, args: string[]) => procs.start(cmd, args) };
    try {
      const iperfPort = await freePort();
      const sockperfPort = await freePort();
      if (tools.iperf3) procs.start('iperf3', ['-s', '-p', String(iperfPort), '-B', '127.0.0.1']);
      if (tools.sockperf) procs.start('sockperf', ['server', '--tcp', '-i', '127.0.0.1', '-p', String(sockperfPort)]);
      if (tools.iperf3) await listening(iperfPort);
      // The idle rows' backend: echoes (one byte per link proves it is set up) and holds any number of connections.
      const idleSrv = createServer((c) => (c.on('error', () => {}), c.pipe(c)));
      idleSrv.listen(0, '127.0.0.1');
      await once(idleSrv, 'listening');
      stops.push(() => new Promise<void>((r) => idleSrv.close(() => r())));
      const idleBackend = (idleSrv.address() as { port: number }).port;
      let haproxyIdle = 0;
      const paths: RelayPath[] = [{ name: 'direct', iperf: iperfPort, sockperf: sockperfPort, pids: [] }];
      if (tools.haproxy) {
        const [a, b] = [await freePort(), await freePort()];
        haproxyIdle = await freePort();
        const cfg = join(dir, 'haproxy.cfg');
        writeFileSync(cfg, [
          'global', '  maxconn 1000', 'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
          `listen iperf`, `  bind 127.0.0.1:${a}`, `  server s1 127.0.0.1:${iperfPort}`,
          `listen sockperf`, `  bind 127.0.0.1:${b}`, `  server s1 127.0.0.1:${sockperfPort}`,
          'listen idle', `  bind 127.0.0.1:${haproxyIdle}`, `  server s1 127.0.0.1:${idleBackend}`, '',
        ].join('\n'));
        const h = procs.start('haproxy', ['-f', cfg, '-db']);
        await listening(a);
        paths.push({ name: 'haproxy', iperf: a, sockperf: b, pids: [h.pid!] });
      }
      if (tools.socat) {
        const pids: number[] = [];
        const front: number[] = [];
        for (const [k, port] of [['iperf', iperfPort], ['sockperf', sockperfPort]] as const) {
          const f = await freePort();
          const uds = join(dir, `${k}.sock`);
          pids.push(procs.start('socat', [`UNIX-LISTEN:${uds},fork`, `TCP:127.0.0.1:${port}`]).pid!);
          await new Promise((r) => setTimeout(r, 100));
          pids.push(procs.start('socat', [`TCP-LISTEN:${f},bind=127.0.0.1,fork,reuseaddr`, `UNIX-CONNECT:${uds}`]).pid!);
          front.push(f);
        }
        await listening(front[0]!);
        paths.push({ name: 'socat-uds', iperf: front[0]!, sockperf: front[1]!, pids });
      }
      // BENCH_RELAYS_YAML: gateway config to compare settings (e.g. "transports: { shm: { spin_us: 50 } }").
      const gw = await ctx.startGateway({ label: 'gateway-relays', extraYaml: process.env['BENCH_RELAYS_YAML'] ?? '' });
      ctx.log(`  ${gw.label}: pid ${gw.pid}, control ${gw.target}`);
      for (const plane of PLANES) {
        if (!SDK_TRANSPORTS.includes(plane)) {
          ctx.log(`  proxy-${plane}: skipped: the SDK cannot attach with ${plane} here`);
          continue;
        }
        const asServer = (port: number) => ({ uri: `tcp://127.0.0.1:${port}` }) as LoopbackServer;
        const p = await startProxyChild(plane, gw.target, asServer(iperfPort), asServer(sockperfPort));
        stops.push(p.stop);
        const port = (uri: string) => Number(p.listenFor.get(uri)!.split(':').pop());
        paths.push({ name: `proxy-${plane}`, iperf: port(`tcp://127.0.0.1:${iperfPort}`), sockperf: port(`tcp://127.0.0.1:${sockperfPort}`), pids: [p.pid, gw.pid] });
      }
      if (!tools.iperf3 || !tools.haproxy) ctx.log(`  sidecar-shm / haproxy-rr: skipped: ${tools.iperf3 ? 'haproxy' : 'iperf3'} is not installed`);
      else {
        // One iperf3 server on every address: the two backends are 127.0.0.1 and 127.0.0.2 (relays-balanced.ts says why).
        const rrPort = await freePort();
        procs.start('iperf3', ['-s', '-p', String(rrPort)]);
        await listening(rrPort);
        const h = await startHaproxyRoundRobin(deps, rrPort);
        paths.push({ name: 'haproxy-rr', iperf: h.port, sockperf: 0, pids: [h.pid], streams: BALANCED_STREAMS, iperfOnly: true });
        const sc = await startSidecarRoundRobin(deps, gw.target, rrPort);
        stops.push(sc.stop);
        paths.push({ name: 'sidecar-shm', iperf: sc.port, sockperf: 0, pids: [sc.pid, gw.pid], streams: BALANCED_STREAMS, iperfOnly: true });
      }
      const rows: BenchRow[] = [];
      // BENCH_RELAYS_PATHS=haproxy,proxy-shm: only these paths (a quicker run when comparing settings).
      const only = process.env['BENCH_RELAYS_PATHS']?.split(',');
      if (only) paths.splice(0, paths.length, ...paths.filter((p) => only.includes(p.name)));
      for (const p of paths) {
        if (tools.iperf3) rows.push(await iperfRow(ctx, p, false, secs), await iperfRow(ctx, p, true, secs));
        if (tools.sockperf && !p.iperfOnly) rows.push(await sockperfRow(ctx, p, secs));
      }
      // Transparent mode vs -L from one network namespace (relays-transparent.ts); BENCH_RELAYS_PATHS may name `transparent`.
      if (tools.iperf3 && (!only || only.includes('transparent'))) rows.push(...(await transparentRows(ctx, secs)));
      const n = ctx.quick ? IDLE_LINKS.quick : IDLE_LINKS.full;
      for (const p of paths) {
        if (p.name === 'haproxy') rows.push(await idleRow(ctx, p, haproxyIdle, n, ['haproxy']));
        else if (p.name.startsWith('proxy-')) {
          // A fresh proxy with one forward to the idle backend; its CPU and the gateway's are measured.
          const backend = { uri: `tcp://127.0.0.1:${idleBackend}` } as LoopbackServer;
          const ip = await startProxyChild(p.name.slice('proxy-'.length) as TransportName, gw.target, backend, backend);
          try {
            rows.push(await idleRow(ctx, { ...p, pids: [ip.pid, gw.pid] }, Number(ip.listenFor.get(backend.uri)!.split(':').pop()), n, ['proxy', 'gateway']));
          } finally {
            await ip.stop();
          }
        }
      }
      for (const r of rows) {
        if (r.transport !== 'sidecar-shm') continue;
        const h = rows.find((b) => b.transport === 'haproxy-rr' && b.name === r.name);
        const v = logBalanced(ctx, r.name, r.throughput_MBps, h?.throughput_MBps ?? null);
        if (v !== null) r['ratio_vs_haproxy_rr'] = v;
      }
      for (const r of rows) {
        if (r.transport === 'sidecar-shm' || r.transport === 'haproxy-rr') continue;
        const h = rows.find((b) => b.transport === 'haproxy' && b.name === r.name);
        if (!h) continue;
        if (r.throughput_MBps !== null && h.throughput_MBps) r['ratio_vs_haproxy'] = round(r.throughput_MBps / h.throughput_MBps, 2);
        if (r.p50_us !== null && h.p50_us) r['p50_ratio_vs_haproxy'] = round(r.p50_us / h.p50_us, 2);
      }
      for (const r of rows) {
        const v = r['ratio_vs_haproxy'] ?? r['p50_ratio_vs_haproxy'];
        if (v !== undefined) ctx.log(`  ${r.name} ${r.transport}: ${r.throughput_MBps !== null ? `${r['gbit_s']} Gbit/s` : `p50 ${r.p50_us} us`} = ${v}x HAProxy${r['relay_cpu_ms_per_GB'] != null ? `, ${r['relay_cpu_ms_per_GB']} CPU ms/GB` : ''}`);
      }
      return rows;
    } finally {
      await Promise.all(stops.map((s) => s()));
      await procs.stop();
    }
  },
};
