/**
 * The gateway-planes family: direct TCP loopback (the baseline, no gateway)
 * against the gateway's `tcp` and `grpc` data planes.
 *
 * - `stream`: one-way throughput. The client writes `size`-byte chunks
 *   (awaiting 'drain' on backpressure) to a sink server; the clock stops when
 *   the sink has received every byte written, so gateway buffering is inside
 *   the measurement. Client -> destination direction only.
 * - `pingpong`: 64-byte message, one in flight, through an echo server; the
 *   round trip crosses the gateway twice.
 *
 * Reference rows (--no-ref drops them): `relay-pipe` and `relay-onread` are
 * not sockgate but a minimal Node relay in a child process (node-relay.ts):
 * what any user-space JS relay costs here, and what reusing read buffers buys.
 *
 * Topology: the bench client, the sink and the echo server share the bench
 * process; each gateway plane runs in its own `sockgate serve` child (one child
 * per plane, so a --cpu-prof profile covers one plane only). Repeats of the
 * three paths are interleaved (direct, tcp, grpc, direct, tcp, grpc, ...) so
 * that a slow moment of the shared machine hits every path alike.
 */
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
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
  startRelay,
  writeLoop,
  type BenchContext,
  type BenchFamily,
  type BenchRow,
  type CpuUse,
  type LoopbackServer,
  type RelayChild,
  type SinkPeer,
} from './lib.js';

/** Write sizes of the streaming rows. */
const STREAM_SIZES = [64, 4096, 65536] as const;
/** Ping-pong message size. */
const PINGPONG_BYTES = 64;
/** Gateway data planes measured against the direct baseline. */
const PLANES: readonly TransportName[] = ['tcp', 'grpc'];
/** At most this many writes per timed run (the time bound usually ends it first). */
const MAX_WRITES_PER_RUN = 4_000_000;
/** At most this many bytes per timed run. */
const MAX_BYTES_PER_RUN = 8 * 2 ** 30;
/** Extra time the sink may need, after the writer stops, to receive what is still in flight. */
const DRAIN_GRACE_MS = 30_000;

interface Timing {
  /** Streaming: warm-up and each timed run, in ms of writing. */
  warmMs: number;
  runMs: number;
  /** Ping-pong: untimed and timed round trips per repeat, and the time bound of one repeat. */
  pingWarmup: number;
  pingCount: number;
  pingMaxMs: number;
}

const FULL: Timing = { warmMs: 500, runMs: 2_000, pingWarmup: 500, pingCount: 5_000, pingMaxMs: 15_000 };
/**
 * Quick (one run per point by default): the grpc plane at 64 B queues ~2 MiB of
 * 64-byte messages in the SDK that take seconds to drain after every run, so
 * fewer runs, not shorter ones, keep --quick inside its 60 s.
 */
const QUICK: Timing = { warmMs: 150, runMs: 500, pingWarmup: 200, pingCount: 2_000, pingMaxMs: 5_000 };

/** One way to reach a loopback server: directly, or through a gateway plane. */
interface Path {
  transport: string;
  /** The process in the middle (gateway child or reference relay), for CPU accounting; undefined for direct. */
  relayPid?: number;
  /** Open a client connection to `server`; returns it and the port the server sees as its peer. */
  dial(server: LoopbackServer): Promise<{ sock: Duplex; peerPort: number }>;
}

interface Conn {
  path: Path;
  sock: Duplex;
  peer: SinkPeer;
  /** Bytes written on this connection so far (warm-up included). */
  sent: number;
}

async function openConn(path: Path, server: LoopbackServer): Promise<Conn> {
  const { sock, peerPort } = await path.dial(server);
  sock.on('error', () => {});
  const peer = await server.peer(peerPort);
  return { path, sock, peer, sent: 0 };
}

/** Write for `ms` (bounded by bytes too), then wait until the sink has everything. */
async function streamRun(conn: Conn, chunk: Buffer, ms: number): Promise<{ bytes: number; ms: number; cpu: CpuUse }> {
  const maxBytes = Math.min(MAX_BYTES_PER_RUN, chunk.length * MAX_WRITES_PER_RUN);
  const before = cpuSnapshot(conn.path.relayPid);
  const start = before.wallMs;
  const bytes = await writeLoop(conn.sock, chunk, maxBytes, start + ms);
  conn.sent += bytes;
  await conn.peer.waitFor(conn.sent, ms + DRAIN_GRACE_MS);
  const after = cpuSnapshot(conn.path.relayPid);
  return { bytes, ms: after.wallMs - start, cpu: cpuUse(before, after) };
}

function cpuText(c: CpuUse): string {
  const f = (v: number | null) => (v === null ? '-' : `${v}%`);
  return `cpu: bench ${f(c.bench_cpu_pct)}, relay ${f(c.relay_cpu_pct)}, machine ${f(c.machine_busy_pct)} busy (others ${f(c.other_load_pct)}), steal ${f(c.steal_pct)}`;
}

/** CPU ms spent per MB moved by one process in one run, or null. */
function msPerMB(pct: number | null, run: { bytes: number; ms: number }): number | null {
  if (pct === null || run.bytes === 0) return null;
  return ((pct / 100) * run.ms) / (run.bytes / 1e6);
}

function medianNullable(xs: readonly (number | null)[], digits: number): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? round(median(v), digits) : null;
}

/** Median of a CPU figure over runs, or null. */
function medianOf(xs: readonly CpuUse[], k: keyof CpuUse): number | null {
  const v = xs.map((x) => x[k]).filter((x): x is number => x !== null);
  return v.length ? round(median(v), 0) : null;
}

async function streamRows(ctx: BenchContext, paths: readonly Path[], sink: LoopbackServer, t: Timing): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const sizes = STREAM_SIZES.filter((s) => !ctx.sizes || ctx.sizes.includes(s));
  for (const size of sizes) {
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
          ctx.log(`  stream ${c.path.transport.padEnd(12)} ${String(size).padStart(5)} B  run ${r + 1}/${ctx.reps}: ${mbps(res.bytes, res.ms).toFixed(1)} MB/s (${(res.bytes / 1e6).toFixed(1)} MB in ${res.ms.toFixed(0)} ms; ${cpuText(res.cpu)})`);
        }
      }
      for (const c of conns) {
        const rs = runs.get(c)!;
        const each = rs.map((x) => mbps(x.bytes, x.ms));
        rows.push({
          name: 'stream',
          transport: c.path.transport,
          size_bytes: size,
          throughput_MBps: round(median(each)),
          p50_us: null,
          p99_us: null,
          family: 'gateway-planes',
          stat: `median of ${rs.length}`,
          runs_MBps: each.map((v) => round(v)),
          bytes_per_run: rs.map((x) => x.bytes),
          bench_cpu_pct: medianOf(rs.map((x) => x.cpu), 'bench_cpu_pct'),
          relay_cpu_pct: medianOf(rs.map((x) => x.cpu), 'relay_cpu_pct'),
          machine_busy_pct: medianOf(rs.map((x) => x.cpu), 'machine_busy_pct'),
          steal_pct: medianOf(rs.map((x) => x.cpu), 'steal_pct'),
          other_load_pct: medianOf(rs.map((x) => x.cpu), 'other_load_pct'),
          // CPU cost per MB is far less sensitive to other tenants than MB/s is.
          bench_cpu_ms_per_MB: medianNullable(rs.map((x) => msPerMB(x.cpu.bench_cpu_pct, x)), 3),
          relay_cpu_ms_per_MB: medianNullable(rs.map((x) => msPerMB(x.cpu.relay_cpu_pct, x)), 3),
        });
      }
    } finally {
      await Promise.all(conns.map((c) => closeSocket(c.sock)));
    }
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
    const counts = new Map<Conn, number>(conns.map((c) => [c, 0]));
    for (let r = 0; r < ctx.reps; r++) {
      for (const c of conns) {
        const samples = await pingPong(c.sock, message, t.pingWarmup, t.pingCount, performance.now() + t.pingMaxMs);
        if (samples.length === 0) throw new Error(`ping-pong over ${c.path.transport}: no samples within ${t.pingMaxMs} ms`);
        const sorted = Float64Array.from(samples).sort();
        const p50 = percentile(sorted, 50);
        const p99 = percentile(sorted, 99);
        p50s.get(c)!.push(p50);
        p99s.get(c)!.push(p99);
        counts.set(c, counts.get(c)! + sorted.length);
        ctx.log(`  pingpong ${c.path.transport.padEnd(12)} run ${r + 1}/${ctx.reps}: p50 ${p50.toFixed(1)} µs, p99 ${p99.toFixed(1)} µs over ${sorted.length} round trips`);
      }
    }
    for (const c of conns) {
      rows.push({
        name: 'pingpong',
        transport: c.path.transport,
        size_bytes: PINGPONG_BYTES,
        throughput_MBps: null,
        p50_us: round(median(p50s.get(c)!)),
        p99_us: round(median(p99s.get(c)!)),
        family: 'gateway-planes',
        stat: `median of ${ctx.reps} (each over ${t.pingCount} round trips after ${t.pingWarmup} warm-up)`,
        round_trips: counts.get(c),
        runs_p50_us: p50s.get(c)!.map((v) => round(v)),
        runs_p99_us: p99s.get(c)!.map((v) => round(v)),
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

function relayPath(relay: RelayChild): Path {
  return {
    transport: `relay-${relay.mode}`,
    relayPid: relay.pid,
    async dial(server) {
      const sock = await dialDirect(relay.portFor(server.port));
      return { sock, peerPort: await relay.upstreamFor(sock.localPort ?? 0) };
    },
  };
}

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
      if (sock.localPort === undefined) throw new Error(`gateway socket ${sock.socketId} has no host-side local port (localUri ${sock.localUri})`);
      return { sock, peerPort: sock.localPort };
    },
  };
}

export const gatewayPlanes: BenchFamily = {
  name: 'gateway-planes',
  description: 'direct TCP loopback vs the gateway tcp and grpc data planes: one-way streaming at 64 B/4 KiB/64 KiB writes and 64 B ping-pong',
  goals: [
    { name: 'stream', transport: 'tcp', size_bytes: 65536, minRatio: 0.7, source: 'issue 2' },
    { name: 'stream', transport: 'grpc', size_bytes: 65536, minRatio: 0.25, source: 'issue 2' },
  ],
  async run(ctx) {
    const t = ctx.quick ? QUICK : FULL;
    const sink = await sinkServer();
    const echo = await echoServer();
    const sdks: SdkGateway[] = [];
    const relays: RelayChild[] = [];
    try {
      const paths: Path[] = [directPath];
      const gateways = await Promise.all(PLANES.map((plane) => ctx.startGateway({ label: `gateway-${plane}` })));
      for (const [i, plane] of PLANES.entries()) {
        const gw = gateways[i]!;
        ctx.log(`  ${gw.label}: pid ${gw.pid}, control ${gw.target}`);
        const sdk = await SdkGateway.connect(gw.target, { transports: [plane] }, { deadlineMs: 15_000 });
        sdks.push(sdk);
        paths.push(gatewayPath(sdk, plane, gw.pid));
      }
      if (ctx.reference) {
        for (const mode of ['pipe', 'onread'] as const) {
          const relay = await startRelay(mode, [sink.port, echo.port]);
          relays.push(relay);
          paths.push(relayPath(relay));
        }
      }
      const rows = await streamRows(ctx, paths, sink, t);
      if (!ctx.sizes || ctx.sizes.includes(PINGPONG_BYTES)) rows.push(...(await pingPongRows(ctx, paths, echo, t)));
      return rows;
    } finally {
      for (const s of sdks) s.close();
      await Promise.all(relays.map((r) => r.stop()));
      await sink.close();
      await echo.close();
    }
  },
};
