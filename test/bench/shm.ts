/**
 * The shm families (issue 3's benchmark):
 *
 * - `shm`: end to end SDK -> gateway -> sink/echo server via the shm data
 *   plane, against the direct-TCP baseline (no gateway) and the gateway's tcp
 *   data plane, in the same run: one-way streaming at 64 B, 4 KiB and 64 KiB
 *   writes (timed until the sink has every byte) and a 64 B ping-pong through
 *   an echo server. Rows are named `shm-stream` / `shm-pingpong` so their
 *   ratios are against this family's own direct rows. Goals: shm >= 1.0x
 *   direct at 64 KiB, and >= 1.5x the tcp plane (reported as ratio_vs_tcp on
 *   the shm rows; the runner's goals are ratios to direct only).
 * - `ring`: the native ring microbenchmark (`npm run bench:ring`,
 *   native/bench) as rows: two-thread ring throughput at 64 B, 4 KiB and
 *   64 KiB against single-core memcpy measured in the same run (the `direct`
 *   row of name `ring`), and 64 B ping-pong latency over rings (spin,
 *   doorbell) against TCP loopback (the `direct` row of `ring-pingpong`) and a
 *   Unix socketpair.
 *
 * Topology as in gateway-planes: the bench client, sink and echo servers in
 * this process; each gateway plane in its own `sockgate serve` child; repeats
 * interleaved across paths.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Gateway as SdkGateway, SDK_TRANSPORTS } from '../../clients/sdk/gateway.js';
import type { TransportName } from '../../clients/sdk/socket.js';
import {
  closeSocket,
  cpuSnapshot,
  cpuUse,
  dialDirect,
  echoServer,
  mbps,
  median,
  percentile,
  pingPong,
  round,
  sinkServer,
  writeLoop,
  type BenchContext,
  type BenchFamily,
  type BenchRow,
  type CpuUse,
  type LoopbackServer,
  type SinkPeer,
} from './lib.js';

/** Write sizes of the streaming rows. */
const STREAM_SIZES = [64, 4096, 65536] as const;
const PINGPONG_BYTES = 64;
/** Gateway planes measured against direct. */
const PLANES: readonly TransportName[] = ['tcp', 'shm'];
/** Bounds of one timed run. */
const MAX_WRITES_PER_RUN = 4_000_000;
const MAX_BYTES_PER_RUN = 8 * 2 ** 30;
/** Extra time the sink may need after the writer stops. */
const DRAIN_GRACE_MS = 30_000;
/** The ring microbenchmark (compile + run) must finish within this. */
const RING_BENCH_TIMEOUT_MS = 120_000;
const RING_BENCH = fileURLToPath(new URL('../../../native/bench/run.sh', import.meta.url));

interface Timing {
  warmMs: number;
  runMs: number;
  pingWarmup: number;
  pingCount: number;
  pingMaxMs: number;
}
const FULL: Timing = { warmMs: 500, runMs: 2_000, pingWarmup: 500, pingCount: 5_000, pingMaxMs: 15_000 };
const QUICK: Timing = { warmMs: 150, runMs: 500, pingWarmup: 200, pingCount: 2_000, pingMaxMs: 5_000 };

interface Path {
  transport: string;
  /** The gateway child, for CPU accounting; undefined for direct. */
  relayPid?: number;
  dial(server: LoopbackServer): Promise<{ sock: Duplex; peerPort: number }>;
}

interface Conn {
  path: Path;
  sock: Duplex;
  peer: SinkPeer;
  sent: number;
}

async function openConn(path: Path, server: LoopbackServer): Promise<Conn> {
  const { sock, peerPort } = await path.dial(server);
  sock.on('error', () => {});
  return { path, sock, peer: await server.peer(peerPort), sent: 0 };
}

async function streamRun(conn: Conn, chunk: Buffer, ms: number): Promise<{ bytes: number; ms: number; cpu: CpuUse }> {
  const maxBytes = Math.min(MAX_BYTES_PER_RUN, chunk.length * MAX_WRITES_PER_RUN);
  const before = cpuSnapshot(conn.path.relayPid);
  const bytes = await writeLoop(conn.sock, chunk, maxBytes, before.wallMs + ms);
  conn.sent += bytes;
  await conn.peer.waitFor(conn.sent, ms + DRAIN_GRACE_MS);
  const after = cpuSnapshot(conn.path.relayPid);
  return { bytes, ms: after.wallMs - before.wallMs, cpu: cpuUse(before, after) };
}

function medianOf(xs: readonly CpuUse[], k: keyof CpuUse): number | null {
  const v = xs.map((x) => x[k]).filter((x): x is number => x !== null);
  return v.length ? round(median(v), 0) : null;
}

function msPerMB(pct: number | null, run: { bytes: number; ms: number }): number | null {
  if (pct === null || run.bytes === 0) return null;
  return ((pct / 100) * run.ms) / (run.bytes / 1e6);
}

function medianNullable(xs: readonly (number | null)[], digits: number): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? round(median(v), digits) : null;
}

async function streamRows(ctx: BenchContext, paths: readonly Path[], sink: LoopbackServer, t: Timing): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const size of STREAM_SIZES.filter((s) => !ctx.sizes || ctx.sizes.includes(s))) {
    const chunk = Buffer.alloc(size, 0x5a);
    const conns: Conn[] = [];
    try {
      for (const p of paths) conns.push(await openConn(p, sink));
      for (const c of conns) await streamRun(c, chunk, t.warmMs);
      const runs = new Map<Conn, { bytes: number; ms: number; cpu: CpuUse }[]>(conns.map((c) => [c, []]));
      for (let r = 0; r < ctx.reps; r++) {
        for (const c of conns) {
          const res = await streamRun(c, chunk, t.runMs);
          runs.get(c)!.push(res);
          const cpu = res.cpu;
          ctx.log(
            `  shm-stream ${c.path.transport.padEnd(6)} ${String(size).padStart(5)} B  run ${r + 1}/${ctx.reps}: ${mbps(res.bytes, res.ms).toFixed(1)} MB/s ` +
              `(bench ${cpu.bench_cpu_pct ?? '-'}%, gateway ${cpu.relay_cpu_pct ?? '-'}%, others ${cpu.other_load_pct ?? '-'}% of all CPUs)`,
          );
        }
      }
      for (const c of conns) {
        const rs = runs.get(c)!;
        const each = rs.map((x) => mbps(x.bytes, x.ms));
        rows.push({
          name: 'shm-stream',
          transport: c.path.transport,
          size_bytes: size,
          throughput_MBps: round(median(each)),
          p50_us: null,
          p99_us: null,
          family: 'shm',
          stat: `median of ${rs.length}`,
          runs_MBps: each.map((v) => round(v)),
          bytes_per_run: rs.map((x) => x.bytes),
          bench_cpu_pct: medianOf(rs.map((x) => x.cpu), 'bench_cpu_pct'),
          relay_cpu_pct: medianOf(rs.map((x) => x.cpu), 'relay_cpu_pct'),
          machine_busy_pct: medianOf(rs.map((x) => x.cpu), 'machine_busy_pct'),
          steal_pct: medianOf(rs.map((x) => x.cpu), 'steal_pct'),
          other_load_pct: medianOf(rs.map((x) => x.cpu), 'other_load_pct'),
          bench_cpu_ms_per_MB: medianNullable(rs.map((x) => msPerMB(x.cpu.bench_cpu_pct, x)), 3),
          relay_cpu_ms_per_MB: medianNullable(rs.map((x) => msPerMB(x.cpu.relay_cpu_pct, x)), 3),
        });
      }
    } finally {
      await Promise.all(conns.map((c) => closeSocket(c.sock)));
    }
  }
  // The second goal: shm against the tcp plane, same size.
  for (const r of rows) {
    if (r.transport !== 'shm') continue;
    const tcp = rows.find((x) => x.transport === 'tcp' && x.size_bytes === r.size_bytes);
    if (tcp?.throughput_MBps && r.throughput_MBps !== null) r['ratio_vs_tcp'] = round(r.throughput_MBps / tcp.throughput_MBps, 3);
  }
  return rows;
}

async function pingPongRows(ctx: BenchContext, paths: readonly Path[], echo: LoopbackServer, t: Timing): Promise<BenchRow[]> {
  const message = Buffer.alloc(PINGPONG_BYTES, 0x42);
  const conns: Conn[] = [];
  const rows: BenchRow[] = [];
  try {
    for (const p of paths) conns.push(await openConn(p, echo));
    const p50s = new Map<Conn, number[]>(conns.map((c) => [c, []]));
    const p99s = new Map<Conn, number[]>(conns.map((c) => [c, []]));
    for (let r = 0; r < ctx.reps; r++) {
      for (const c of conns) {
        const samples = await pingPong(c.sock, message, t.pingWarmup, t.pingCount, performance.now() + t.pingMaxMs);
        if (samples.length === 0) throw new Error(`ping-pong over ${c.path.transport}: no samples within ${t.pingMaxMs} ms`);
        const sorted = Float64Array.from(samples).sort();
        p50s.get(c)!.push(percentile(sorted, 50));
        p99s.get(c)!.push(percentile(sorted, 99));
        ctx.log(`  shm-pingpong ${c.path.transport.padEnd(6)} run ${r + 1}/${ctx.reps}: p50 ${percentile(sorted, 50).toFixed(1)} µs, p99 ${percentile(sorted, 99).toFixed(1)} µs over ${sorted.length}`);
      }
    }
    for (const c of conns) {
      rows.push({
        name: 'shm-pingpong',
        transport: c.path.transport,
        size_bytes: PINGPONG_BYTES,
        throughput_MBps: null,
        p50_us: round(median(p50s.get(c)!)),
        p99_us: round(median(p99s.get(c)!)),
        family: 'shm',
        stat: `median of ${ctx.reps} (each over ${t.pingCount} round trips after ${t.pingWarmup} warm-up)`,
      });
    }
  } finally {
    await Promise.all(conns.map((c) => closeSocket(c.sock)));
  }
  return rows;
}

const directPath: Path = {
  transport: 'direct',
  async dial(server) {
    const sock = await dialDirect(server.port);
    return { sock, peerPort: sock.localPort ?? 0 };
  },
};

function gatewayPath(sdk: SdkGateway, plane: TransportName, relayPid: number): Path {
  return {
    transport: plane,
    relayPid,
    async dial(server) {
      const sock = await sdk.connect(server.uri, { transports: [plane], noDelay: true });
      if (sock.transport !== plane) {
        sock.destroy();
        throw new Error(`asked for the ${plane} data plane, got ${sock.transport} (fallbacks: ${JSON.stringify(sock.fallbacks)})`);
      }
      if (sock.localPort === undefined) throw new Error(`gateway socket ${sock.socketId} has no host-side local port`);
      return { sock, peerPort: sock.localPort };
    },
  };
}

export const shmFamily: BenchFamily = {
  name: 'shm',
  description: 'SDK -> gateway -> server via the shm plane vs direct TCP and the tcp plane: streaming at 64 B/4 KiB/64 KiB writes, 64 B ping-pong',
  skip() {
    return SDK_TRANSPORTS.includes('shm') ? undefined : 'this SDK cannot attach with shm (native addon not loaded)';
  },
  goals: [{ name: 'shm-stream', transport: 'shm', size_bytes: 65536, minRatio: 1.0, source: 'issue 3 (and >= 1.5x the tcp plane: ratio_vs_tcp)' }],
  async run(ctx) {
    const t = ctx.quick ? QUICK : FULL;
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-bench-shm-'));
    const sink = await sinkServer();
    const echo = await echoServer();
    const sdks: SdkGateway[] = [];
    try {
      const paths: Path[] = [directPath];
      const gateways = await Promise.all(
        PLANES.map((plane) =>
          ctx.startGateway({ label: `shm-family-${plane}`, extraYaml: plane === 'shm' ? `transports: { shm: { path: "${join(dir, 'shm.sock')}" } }\n` : '' }),
        ),
      );
      for (const [i, plane] of PLANES.entries()) {
        const gw = gateways[i]!;
        ctx.log(`  ${gw.label}: pid ${gw.pid}, control ${gw.target}`);
        const sdk = await SdkGateway.connect(gw.target, { transports: [plane] }, { deadlineMs: 15_000 });
        sdks.push(sdk);
        paths.push(gatewayPath(sdk, plane, gw.pid));
      }
      const rows = await streamRows(ctx, paths, sink, t);
      for (const r of rows.filter((x) => x.transport === 'shm')) {
        ctx.log(`  shm-stream shm at ${r.size_bytes} B: ${r['ratio_vs_tcp'] ?? '-'}x the tcp plane`);
      }
      if (!ctx.sizes || ctx.sizes.includes(PINGPONG_BYTES)) rows.push(...(await pingPongRows(ctx, paths, echo, t)));
      return rows;
    } finally {
      for (const s of sdks) s.close();
      await sink.close();
      await echo.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

interface RingBenchJson {
  cores: number;
  cpus_obtained_during_64KiB_run: number;
  memcpy_single_core_GBps: number;
  ring_64B: { msgs_per_s: number; GBps: number };
  ring_4KiB: { msgs_per_s: number; GBps: number };
  ring_64KiB: { msgs_per_s: number; GBps: number };
  pingpong_64B_rtt_us: Record<'ring_spin' | 'ring_doorbell' | 'tcp_loopback' | 'unix_socketpair', { p50: number; p99: number }>;
}

/** The ring microbenchmark's JSON as rows. */
export function ringRows(j: RingBenchJson): BenchRow[] {
  const base = { family: 'ring', cores: j.cores, cpus_obtained: j.cpus_obtained_during_64KiB_run };
  const rows: BenchRow[] = [];
  const memcpy = round(j.memcpy_single_core_GBps * 1000);
  const sizes: [number, { msgs_per_s: number; GBps: number }][] = [
    [64, j.ring_64B],
    [4096, j.ring_4KiB],
    [65536, j.ring_64KiB],
  ];
  for (const [size, r] of sizes) {
    rows.push({ name: 'ring', transport: 'direct', size_bytes: size, throughput_MBps: memcpy, p50_us: null, p99_us: null, ...base, stat: 'single-core memcpy bandwidth, same run (the copying ring\'s limit)' });
    rows.push({ name: 'ring', transport: 'ring', size_bytes: size, throughput_MBps: round(r.GBps * 1000), p50_us: null, p99_us: null, ...base, msgs_per_s: Math.round(r.msgs_per_s), stat: 'two threads, producer and consumer' });
  }
  const pp = j.pingpong_64B_rtt_us;
  const lat: [string, { p50: number; p99: number }][] = [
    ['direct', pp.tcp_loopback],
    ['unix', pp.unix_socketpair],
    ['ring-spin', pp.ring_spin],
    ['ring-doorbell', pp.ring_doorbell],
  ];
  for (const [transport, v] of lat) {
    rows.push({ name: 'ring-pingpong', transport, size_bytes: 64, throughput_MBps: null, p50_us: v.p50, p99_us: v.p99, ...base, stat: transport === 'direct' ? 'TCP loopback, same run' : 'two threads, same run' });
  }
  return rows;
}

export const ringFamily: BenchFamily = {
  name: 'ring',
  description: 'native shm ring alone (npm run bench:ring): throughput at 64 B/4 KiB/64 KiB vs same-run memcpy, 64 B ping-pong vs TCP loopback and a Unix socketpair',
  skip() {
    try {
      execFileSync('sh', ['-c', 'command -v g++'], { stdio: 'ignore' });
      return undefined;
    } catch {
      return 'g++ is not installed (the ring microbenchmark is compiled on the fly)';
    }
  },
  goals: [{ name: 'ring', transport: 'ring', size_bytes: 65536, minRatio: 0.6, source: 'issue 3 (64 KiB ring >= 60% of memcpy)' }],
  async run(ctx) {
    const out = await new Promise<string>((resolve, reject) =>
      execFile('sh', [RING_BENCH], { timeout: RING_BENCH_TIMEOUT_MS, maxBuffer: 1 << 20 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${RING_BENCH} failed: ${err.message}\n${stderr}`)) : resolve(stdout),
      ),
    );
    const j = JSON.parse(out) as RingBenchJson;
    ctx.log(`  ring: memcpy ${j.memcpy_single_core_GBps} GB/s; 64 B ${Math.round(j.ring_64B.msgs_per_s / 1e6 * 10) / 10} M msgs/s (goal >= 10 M); CPUs obtained during the 64 KiB run: ${j.cpus_obtained_during_64KiB_run}`);
    ctx.log(`  ring ping-pong p50: spin ${j.pingpong_64B_rtt_us.ring_spin.p50} µs vs TCP loopback ${j.pingpong_64B_rtt_us.tcp_loopback.p50} µs (goal <= 1/10)`);
    return ringRows(j);
  },
};
