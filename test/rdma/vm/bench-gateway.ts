/**
 * The gateway's own RDMA figures for issue 5's benchmark, run by bench-peer.ts
 * after its perftest and TCP baselines, in the same two VMs (topology b):
 *
 * - server (VM a, 10.99.0.1): in-process sockgate gateways with the rdma
 *   transport on 10.99.0.1 (one with the default rings, one with 4 MiB rings),
 *   a TCP sink and a TCP echo server on 10.99.0.1 as their destinations, and a
 *   bare native rdma listener (rdma.listen on a pump of its own, each slot
 *   linked to a socketpair whose JS end is a sink or an echo);
 * - client (VM b): the SDK (`transports: ['rdma']`, no fallback) streams 64 KiB
 *   writes into the sink for STREAM_SECONDS and ping-pongs 64 B through the
 *   echo; then the same over a bare native connection (rdma.connect + a
 *   socketpair, no gRPC control plane, no GatewaySocket, no host TCP socket on
 *   the far side), which tells what the JS and gateway layers cost.
 *
 * Throughput counts what the sink acknowledges: at the end of the stream the
 * client half-closes, the sink answers with its byte count, and the clock stops
 * when that answer arrives (so nothing still buffered counts).
 *
 * Alongside each figure, under `profile`: CPU accounting of both VMs over the
 * measured interval (/proc/stat: user, system, softirq, idle shares; the
 * process's CPU time and its busiest threads; machine-wide context switches,
 * interrupts and eth0 packets, per MB or per round trip) and how many rdma
 * pump events reached JS, by kind: what bounds a figure when a goal is missed.
 * Under TCG every CPU figure includes the time the host did not run the vCPU
 * (no steal is reported), so compare them within one run.
 *
 * Debugging (bench-peer.ts with SOCKGATE_BENCH_ONLY=gateway):
 * SOCKGATE_BENCH_PHASES picks some of PHASES; SOCKGATE_BENCH_PERF=1 records
 * `perf record -a -g` around each measurement (on the client; on the server
 * from a sink's first byte to its end, an echo's first byte to its close) and
 * writes `perf report` text to $SOCKGATE_VM_OUT (run.js --out). SOCKGATE_BENCH_RDMA_POLL_US
 * sets every connection's CQ poll budget (rows named "... (poll N us)").
 */
import { createServer, Socket, type Server } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { percentile, pingPong as echoRounds, roundTo, within, writeLoop, type BenchRow as Row } from '../../bench/lib.js';
import { countHubEvents, cpuMark, cpuSpan, diffCounts, EventCount, perfRecord, perUnit, type CpuMark, type CpuSpan } from './bench-measure.js';

export const BW_SIZE = 65536;
export const LAT_SIZE = 64;
/** Gateway control ports: default rings, big rings. */
export const PORT_GW = 7070;
export const PORT_GW_BIG = 7072;
/** Destinations behind the gateway. */
export const PORT_GW_SINK = 5211;
export const PORT_GW_ECHO = 5212;
/** The bare native rdma listener. */
export const PORT_RAW = 18620;
/** The big-ring gateway: its receive ring per socket, and the SDK's. */
export const BIG_RING_BYTES = 4 << 20;
/** Slots of the big-ring gateway (its region is slots x ring, registered on both sides). */
const BIG_SLOTS = 8;
/** SOCKGATE_BENCH_RDMA_POLL_US: the CQ poll budget of every connection, both ends (transports.rdma.poll_us, rdma.pollUs); 0 = off. */
const POLL_US = Number(process.env['SOCKGATE_BENCH_RDMA_POLL_US'] || 0);
/** First token byte of a raw connection: which JS end its slot gets on the server. */
const RAW_SINK = 1;
const RAW_ECHO = 2;

const log = (msg: string): void => void process.stdout.write(`bench-gateway: ${msg}\n`);

/** How long a stalled stream (no drain) or a missing sink answer may take. */
const STALL_MS = 60_000;

// ---- destinations: sink and echo ----------------------------------------------------------

/** What a sink reports at the end of a stream (one JSON line). */
interface SinkReport {
  bytes: number;
  /** First byte to end of stream, on the server's clock. */
  seconds: number;
  cpu: CpuSpan;
  events?: Record<string, number>;
}

/**
 * A sink on one stream: counts bytes; on the stream's end answers with a
 * SinkReport line and ends. `events` (optional) is counted over the same span.
 */
function sinkOn(s: Socket, events?: EventCount): void {
  let bytes = 0;
  let first: CpuMark | undefined;
  let ev0: Record<string, number> = {};
  let perf: { stop(): Promise<void> } | undefined;
  s.on('data', (d: Buffer) => {
    if (!first) {
      first = cpuMark();
      ev0 = events?.snapshot() ?? {};
      perf = perfRecord(`sink-${++destinations}`);
    }
    bytes += d.length;
  });
  s.on('end', () => {
    void perf?.stop();
    const last = cpuMark();
    const cpu = first ? cpuSpan(first, last) : cpuSpan(last, last);
    const report: SinkReport = { bytes, seconds: cpu.seconds, cpu, ...(events ? { events: diffCounts(ev0, events.snapshot()) } : {}) };
    s.end(`${JSON.stringify(report)}\n`);
  });
  s.on('error', () => {});
}

function echoOn(s: Socket): void {
  // With SOCKGATE_BENCH_PERF=1: the server's side of a ping-pong, from its first byte to its close.
  s.once('data', () => {
    const perf = perfRecord(`echo-${++destinations}`);
    s.once('close', () => void perf.stop());
  });
  s.pipe(s);
  s.on('error', () => {});
}

let destinations = 0; // destinations served so far (names their perf reports)

async function listenOn(server: Server, host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
}

// ---- server (VM a) ------------------------------------------------------------------------

export interface GatewayServers {
  close(): Promise<void>;
}

/** Start the gateways, their destinations and the bare rdma listener on `addr`. */
export async function startServers(addr: string): Promise<GatewayServers> {
  const t0 = performance.now();
  const events = await countHubEvents();
  const sink = createServer({ allowHalfOpen: true }, (s) => sinkOn(s, events));
  const echo = createServer({ allowHalfOpen: true, noDelay: true } as Parameters<typeof createServer>[0], (s) => {
    s.setNoDelay(true);
    echoOn(s);
  });
  await listenOn(sink, addr, PORT_GW_SINK);
  await listenOn(echo, addr, PORT_GW_ECHO);

  const { loadConfig } = await import('../../../server/config.js');
  const { Gateway } = await import('../../../server/gateway.js');
  const gatewayConfig = (controlPort: number, rdma: Record<string, unknown>) =>
    loadConfig({
      overrides: {
        listen: { control: `${addr}:${controlPort}`, data: '127.0.0.1:0', metrics: '' },
        transports: { enabled: ['rdma', 'tcp'], rdma: { address: addr, poll_us: POLL_US, ...rdma } },
        rules: [{ name: 'bench-destinations', action: 'allow', protocols: ['tcp'], directions: ['connect'], destinations: [`${addr}/32`], ports: [`${PORT_GW_SINK}-${PORT_GW_ECHO}`] }],
        telemetry: { log_level: 'warn', traces: 'none' },
        shutdown: { drain_timeout_ms: 2000 },
      },
    });
  const gateways = [
    new Gateway(gatewayConfig(PORT_GW, {})),
    new Gateway(gatewayConfig(PORT_GW_BIG, { ring_bytes: BIG_RING_BYTES, slots: BIG_SLOTS })),
  ];
  for (const g of gateways) {
    const a = await g.start();
    const r = g.config.transports.rdma;
    log(`gateway serving: control ${a.control}, rdma ${r.address} (ring ${r.ring_bytes} B, ${r.slots} slots, ${r.credits} credits)`);
  }

  const raw = await rawListener(addr);
  log(`servers up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return {
    async close() {
      raw.close();
      sink.close();
      echo.close();
      await Promise.race([Promise.all(gateways.map((g) => g.destroy())), new Promise((r) => setTimeout(r, 10_000))]);
    },
  };
}

/** The bare native listener: each accepted connection's slot 0 goes to a sink or an echo (by the token's first byte). */
async function rawListener(addr: string): Promise<{ close(): void }> {
  const n = await import('../../../native/index.js');
  if (!n.rdma.available || !n.rdma.listen) throw new Error(`native rdma unavailable: ${n.rdma.reason}`);
  const events = new EventCount();
  const conns = new Map<number, { conn: import('../../../native/index.js').RawRdmaConn; mode: number }>();
  let listener: import('../../../native/index.js').RawRdmaListener | undefined = undefined;
  const pump = new n.Pump((batch) => {
    for (const e of batch) {
      if (e.type !== 'rdma') continue;
      events.add(e);
      if (listener && e.rdma === listener.id && e.event === 'request') {
        const conn = listener.accept(e.conn);
        conns.set(conn.id, { conn, mode: e.token[0] ?? 0 });
        continue;
      }
      const c = conns.get(e.rdma);
      if (!c) continue;
      if (e.event === 'established') {
        const [a, b] = n.binding.socketpair();
        c.conn.link(0, a);
        const s = new Socket({ fd: b, allowHalfOpen: true, readable: true, writable: true });
        if (c.mode === RAW_SINK) sinkOn(s, events);
        else echoOn(s);
      } else if (e.event === 'failed' || e.event === 'closed') {
        if (e.code !== 'ok' && e.code !== 'ERR_SOCKGATE_RDMA_DISCONNECTED') log(`raw connection ${e.rdma} ${e.event}: ${e.code} ${e.message}`);
        conns.delete(e.rdma);
      }
    }
  });
  listener = n.rdma.listen(pump.raw, { addr, port: PORT_RAW, pollUs: POLL_US });
  log(`bare rdma listener on ${addr}:${listener.port}`);
  return {
    close() {
      for (const c of conns.values()) {
        try {
          c.conn.close();
        } catch {
          // gone
        }
      }
      try {
        listener?.close();
      } catch {
        // gone
      }
    },
  };
}

// ---- client (VM b) ------------------------------------------------------------------------

export interface StreamResult {
  MBps: number;
  bytes: number;
  seconds: number;
  /** The sink's own view: bytes over first byte to end of stream on its clock. */
  sink_MBps: number;
  client_cpu: CpuSpan;
  server_cpu: CpuSpan;
  /** Event-loop utilization of the client's JS thread over the stream. */
  client_elu: number;
  client_events?: Record<string, number>;
  server_events?: Record<string, number>;
}

/** 64 KiB writes for `seconds`, then half-close; resolves when the sink's count came back. */
async function streamInto(s: Duplex, seconds: number, events?: EventCount): Promise<StreamResult> {
  const chunk = Buffer.alloc(BW_SIZE, 0x5a);
  let reply = '';
  let resolveReply!: () => void;
  const gotReply = new Promise<void>((r) => (resolveReply = r));
  s.on('data', (d: Buffer) => {
    reply += d.toString();
    if (reply.includes('\n')) resolveReply();
  });
  const failed = new Promise<never>((_, reject) => {
    s.once('error', reject);
    s.once('close', () => reject(new Error(`the stream closed before the sink answered (got ${JSON.stringify(reply.slice(0, 200))})`)));
  });
  failed.catch(() => {});
  const ev0 = events?.snapshot() ?? {};
  const elu0 = performance.eventLoopUtilization();
  const mark0 = cpuMark();
  const stopAt = mark0.t + seconds * 1000;
  const sent = await within(writeLoop(s, chunk, Number.MAX_SAFE_INTEGER, stopAt), seconds * 1000 + STALL_MS, `stream of ${seconds} s stalled`);
  s.end();
  await within(Promise.race([gotReply, failed]), STALL_MS, `the sink's count after ${sent} bytes`);
  const mark1 = cpuMark();
  const elu = performance.eventLoopUtilization(elu0);
  const report = JSON.parse(reply.slice(0, reply.indexOf('\n'))) as SinkReport;
  if (report.bytes !== sent) throw new Error(`the sink counted ${report.bytes} bytes, ${sent} were sent`);
  const secs = (mark1.t - mark0.t) / 1000;
  return {
    MBps: sent / secs / 1e6,
    bytes: sent,
    seconds: secs,
    sink_MBps: report.seconds > 0 ? report.bytes / report.seconds / 1e6 : 0,
    client_cpu: cpuSpan(mark0, mark1),
    server_cpu: report.cpu,
    client_elu: roundTo(elu.utilization, 3),
    ...(events ? { client_events: diffCounts(ev0, events.snapshot()) } : {}),
    ...(report.events ? { server_events: report.events } : {}),
  };
}

export interface PingResult {
  /** Round trips in µs, sorted. */
  rtts: number[];
  client_cpu: CpuSpan;
  client_events?: Record<string, number>;
}

/** 64 B ping-pongs (test/bench/lib.ts pingPong): `warmup` first, then `iters` measured (bounded by `deadlineMs`). */
export async function pingPong(s: Duplex, warmup: number, iters: number, deadlineMs: number, events?: EventCount): Promise<PingResult> {
  const msg = Buffer.alloc(LAT_SIZE, 0x61);
  const deadline = performance.now() + deadlineMs;
  // A missing echo: the whole loop fails STALL_MS after its deadline.
  const bounded = <T>(p: Promise<T>) => within(p, deadlineMs + STALL_MS, `ping-pong (${warmup} + ${iters} round trips)`);
  if (warmup > 0) await bounded(echoRounds(s, msg, 0, warmup, deadline));
  const mark0 = cpuMark();
  const ev0 = events?.snapshot() ?? {};
  const rtts = await bounded(echoRounds(s, msg, 0, iters, deadline));
  const mark1 = cpuMark();
  return {
    rtts: Array.from(rtts).sort((a, b) => a - b),
    client_cpu: cpuSpan(mark0, mark1),
    ...(events ? { client_events: diffCounts(ev0, events.snapshot()) } : {}),
  };
}

export interface ClientParams {
  addr: string;
  streamSeconds: number;
  latIters: number;
  latWarmup: number;
}

export interface ChannelFigures {
  stream?: StreamResult;
  ping?: PingResult;
  streamBig?: StreamResult;
  rawStream?: StreamResult;
  rawPing?: PingResult;
  /** Why the bare native measurements did not complete (they are optional). */
  rawError?: string;
  /** The defaults the default-ring figures ran with: the gateway's transports.rdma and the SDK's ring. */
  defaults?: { gatewayRingBytes: number; slots: number; credits: number; sdkRingBytes: number };
}

/** The client's measurements, in order; `phases` (debugging) picks some of them. */
export const PHASES = ['stream', 'ping', 'stream-big', 'raw-stream', 'raw-ping'] as const;
export type Phase = (typeof PHASES)[number];

/** Everything the client measures, in order: SDK stream, SDK ping-pong, SDK stream with big rings, bare native. */
export async function runClient(p: ClientParams & { phases?: readonly Phase[] }): Promise<ChannelFigures> {
  const want = (ph: Phase) => !p.phases || p.phases.includes(ph);
  const f: ChannelFigures = {};
  const t0 = performance.now();
  const events = await countHubEvents();
  const { Gateway } = await import('../../../clients/sdk/gateway.js');
  log(`SDK loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const { loadConfig } = await import('../../../server/config.js');
  const { RdmaClient } = await import('../../../clients/sdk/attach-rdma.js');
  const gwDefaults = loadConfig().transports.rdma;
  f.defaults = { gatewayRingBytes: gwDefaults.ring_bytes, slots: gwDefaults.slots, credits: gwDefaults.credits, sdkRingBytes: new RdmaClient().offer().ringBytes };

  const open = async (controlPort: number, rdma: { ringBytes?: number } = {}) =>
    Gateway.connect(`${p.addr}:${controlPort}`, { transports: ['rdma'], rdma: { pollUs: POLL_US, ...rdma } });
  const socket = async (gw: Awaited<ReturnType<typeof open>>, destPort: number) => {
    const s = await gw.connect(`tcp://${p.addr}:${destPort}`, { noDelay: true });
    if (s.transport !== 'rdma') throw new Error(`the socket rides ${s.transport}, not rdma (fallbacks: ${JSON.stringify(s.fallbacks)})`);
    return s;
  };

  if (want('stream') || want('ping')) {
    const gw = await open(PORT_GW);
    if (want('stream')) {
      log('SDK rdma stream (default rings)');
      const s = await socket(gw, PORT_GW_SINK);
      const perf = perfRecord('stream');
      f.stream = await streamInto(s, p.streamSeconds, events);
      await perf.stop();
      s.destroy();
      log(`  ${f.stream.MBps.toFixed(1)} MB/s`);
    }
    if (want('ping')) {
      log('SDK rdma ping-pong');
      const e = await socket(gw, PORT_GW_ECHO);
      const perf = perfRecord('ping');
      f.ping = await pingPong(e, p.latWarmup, p.latIters, 180_000, events);
      await perf.stop();
      e.destroy();
      log(`  RTT p50 ${percentile(f.ping.rtts, 50).toFixed(0)} us`);
    }
    gw.close();
  }
  if (want('stream-big')) {
    log(`SDK rdma stream (${BIG_RING_BYTES >> 20} MiB rings)`);
    const gw = await open(PORT_GW_BIG, { ringBytes: BIG_RING_BYTES });
    const s = await socket(gw, PORT_GW_SINK);
    f.streamBig = await streamInto(s, p.streamSeconds, events);
    s.destroy();
    gw.close();
    log(`  ${f.streamBig.MBps.toFixed(1)} MB/s`);
  }
  if (want('raw-stream') || want('raw-ping')) {
    try {
      await rawClient(p, want('raw-stream'), want('raw-ping'), f);
    } catch (err) {
      // Optional figures: the gateway's rows stand without them.
      f.rawError = (err as Error).message;
      log(`bare native connection failed: ${f.rawError}`);
    }
  }
  return f;
}

/** The same two measurements over a bare native connection (no gateway, no SDK). */
async function rawClient(p: ClientParams, doStream: boolean, doPing: boolean, f: ChannelFigures): Promise<void> {
  const n = await import('../../../native/index.js');
  const events = new EventCount();
  const waiters: Array<{ id: number; resolve: (e: { event: string; code?: string; message?: string }) => void }> = [];
  const pump = new n.Pump((batch) => {
    for (const e of batch) {
      if (e.type !== 'rdma') continue;
      events.add(e);
      if (e.event === 'established' || e.event === 'failed') {
        const i = waiters.findIndex((w) => w.id === e.rdma);
        if (i >= 0) waiters.splice(i, 1)[0]!.resolve(e);
      }
    }
  });
  const open = async (mode: number) => {
    const token = Buffer.alloc(16, 0);
    token[0] = mode;
    const conn = n.rdma.connect!(pump.raw, { addr: p.addr, port: PORT_RAW, token, pollUs: POLL_US });
    const e = await new Promise<{ event: string; code?: string; message?: string }>((resolve) => waiters.push({ id: conn.id, resolve }));
    if (e.event !== 'established') throw new Error(`rdma connect to ${p.addr}:${PORT_RAW}: ${e.code} ${e.message ?? ''}`);
    const [a, b] = n.binding.socketpair();
    conn.link(0, a);
    return { conn, s: new Socket({ fd: b, allowHalfOpen: true, readable: true, writable: true }) };
  };
  try {
    if (doStream) {
      log('bare native rdma stream');
      const st = await open(RAW_SINK);
      const perf = perfRecord('raw-stream');
      f.rawStream = await streamInto(st.s, p.streamSeconds, events);
      await perf.stop();
      st.s.destroy();
      st.conn.close();
      log(`  ${f.rawStream.MBps.toFixed(1)} MB/s`);
    }
    if (doPing) {
      log('bare native rdma ping-pong');
      const ec = await open(RAW_ECHO);
      const perf = perfRecord('raw-ping');
      f.rawPing = await pingPong(ec.s, p.latWarmup, p.latIters, 180_000, events);
      await perf.stop();
      ec.s.destroy();
      ec.conn.close();
      log(`  RTT p50 ${percentile(f.rawPing.rtts, 50).toFixed(0)} us`);
    }
  } finally {
    setTimeout(() => {
      try {
        pump.close();
      } catch {
        // still busy: the process exits anyway
      }
    }, 500).unref();
  }
}

// ---- rows ----------------------------------------------------------------------------------

/** The references the goals are stated against (from bench-peer's rows). */
export interface Baselines {
  ibWriteBwMBps: number;
  ibWriteLatP50us: number;
  ibWriteLatP99us: number;
  tcpMBps: number;
  tcpP50us: number;
  tcpP99us: number;
  /** Context only (not a goal): perftest's event-driven SEND figures, when present. */
  ibSendBwMBps?: number;
  ibSendLatP50us?: number;
}

/** Per-MB and per-event figures of a stream (what bounds it). */
function streamProfile(r: StreamResult): Record<string, unknown> {
  const mb = r.bytes / 1e6;
  const per = (ev: Record<string, number> | undefined) =>
    ev ? Object.fromEntries(Object.entries(ev).map(([k, v]) => [k, roundTo(v / mb, 2)])) : undefined;
  return {
    bytes: r.bytes,
    seconds: roundTo(r.seconds, 2),
    sink_side_MBps: roundTo(r.sink_MBps),
    client_vm_cpu: r.client_cpu,
    server_vm_cpu: r.server_cpu,
    client_js_event_loop_utilization: r.client_elu,
    client_vm_per_MB: perUnit(r.client_cpu, mb),
    server_vm_per_MB: perUnit(r.server_cpu, mb),
    client_process_cpu_ms_per_MB: roundTo(((r.client_cpu.proc_user_s + r.client_cpu.proc_sys_s) * 1000) / mb, 2),
    server_process_cpu_ms_per_MB: roundTo(((r.server_cpu.proc_user_s + r.server_cpu.proc_sys_s) * 1000) / mb, 2),
    ...(r.client_events ? { client_rdma_events_per_MB: per(r.client_events) } : {}),
    ...(r.server_events ? { server_rdma_events_per_MB: per(r.server_events) } : {}),
  };
}

function streamRow(name: string, r: StreamResult, b: Baselines, note: string, extra: Record<string, unknown> = {}): Row {
  const vsBw = r.MBps / b.ibWriteBwMBps;
  const vsTcp = r.MBps / b.tcpMBps;
  return {
    name,
    transport: 'rdma',
    size_bytes: BW_SIZE,
    throughput_MBps: roundTo(r.MBps),
    p50_us: null,
    p99_us: null,
    vs_ib_write_bw: roundTo(vsBw, 3),
    vs_tcp: roundTo(vsTcp, 3),
    ...(b.ibSendBwMBps ? { vs_ib_send_bw_e: roundTo(r.MBps / b.ibSendBwMBps, 3) } : {}),
    goal: '>= 0.8 x ib_write_bw -R (64 KiB) and faster than TCP over the same link',
    goal_met: vsBw >= 0.8 && vsTcp > 1,
    goal_met_vs_ib_write_bw: vsBw >= 0.8,
    goal_met_vs_tcp: vsTcp > 1,
    note,
    ...extra,
    profile: streamProfile(r),
  };
}

function pingRow(name: string, r: PingResult, b: Baselines, note: string, extra: Record<string, unknown> = {}): Row {
  const p50 = percentile(r.rtts, 50);
  const p99 = percentile(r.rtts, 99);
  const vsLat = p50 / b.ibWriteLatP50us;
  const vsTcp = p50 / b.tcpP50us;
  const n = r.rtts.length;
  return {
    name,
    transport: 'rdma',
    size_bytes: LAT_SIZE,
    throughput_MBps: null,
    p50_us: roundTo(p50, 2),
    p99_us: roundTo(p99, 2),
    vs_ib_write_lat: roundTo(vsLat, 3),
    vs_ib_write_lat_p99: roundTo(p99 / b.ibWriteLatP99us, 3),
    vs_tcp: roundTo(vsTcp, 3),
    vs_tcp_p99: roundTo(p99 / b.tcpP99us, 3),
    ...(b.ibSendLatP50us ? { vs_ib_send_lat_e: roundTo(p50 / b.ibSendLatP50us, 3) } : {}),
    goal: '<= 1.5 x ib_write_lat -R round trip (p50) and faster than TCP over the same link',
    goal_met: vsLat <= 1.5 && vsTcp < 1,
    goal_met_vs_ib_write_lat: vsLat <= 1.5,
    goal_met_vs_tcp: vsTcp < 1,
    note,
    iterations: n,
    min_us: roundTo(r.rtts[0] ?? 0, 2),
    ...extra,
    profile: {
      client_vm_cpu: r.client_cpu,
      client_vm_per_round_trip: perUnit(r.client_cpu, n),
      client_process_cpu_ms_per_round_trip: roundTo(((r.client_cpu.proc_user_s + r.client_cpu.proc_sys_s) * 1000) / n, 3),
      ...(r.client_events ? { client_rdma_events_per_round_trip: Object.fromEntries(Object.entries(r.client_events).map(([k, v]) => [k, roundTo(v / n, 2)])) } : {}),
    },
  };
}

export function figuresToRows(f: ChannelFigures, b: Baselines): Row[] {
  const rows: Row[] = [];
  const d = f.defaults;
  const kib = (n: number | undefined) => (n === undefined ? '?' : n >= 1 << 20 ? `${n / (1 << 20)} MiB` : `${n / 1024} KiB`);
  if (f.stream) {
    rows.push(
      streamRow(
        'sockgate rdma channel stream',
        f.stream,
        b,
        `SDK Gateway (transports: [rdma], no fallback) on b -> in-process gateway on a (transports.rdma defaults: ${kib(d?.gatewayRingBytes)} rings, ${d?.slots} slots, ${d?.credits} credits; SDK default ring ${kib(d?.sdkRingBytes)}) -> TCP sink on 10.99.0.1; 64 KiB writes; bytes the sink acknowledged / time until its count came back`,
        { gateway_ring_bytes: d?.gatewayRingBytes, sdk_ring_bytes: d?.sdkRingBytes, slots: d?.slots, credits: d?.credits },
      ),
    );
  }
  if (f.ping) {
    rows.push(
      pingRow(
        'sockgate rdma channel ping-pong',
        f.ping,
        b,
        'round trip of 64 B: SDK socket on b -> gateway on a -> TCP echo on 10.99.0.1 and back (TCP_NODELAY); default rings',
      ),
    );
  }
  if (f.streamBig) {
    rows.push(
      streamRow(
        'sockgate rdma channel stream (4 MiB rings)',
        f.streamBig,
        b,
        `as 'sockgate rdma channel stream' with transports.rdma.ring_bytes ${BIG_RING_BYTES} (slots ${BIG_SLOTS}) and the SDK's rdma.ringBytes ${BIG_RING_BYTES}`,
        { gateway_ring_bytes: BIG_RING_BYTES, sdk_ring_bytes: BIG_RING_BYTES, slots: BIG_SLOTS, credits: d?.credits },
      ),
    );
  }
  if (f.rawStream) {
    rows.push(
      streamRow(
        'native rdma connection stream (no gateway/SDK)',
        f.rawStream,
        b,
        'rdma.connect + socketpair on b -> rdma.listen on a, slot linked to a socketpair read by a JS sink: the native data path without the gRPC control plane, the SDK socket and the gateway host TCP socket; native region defaults (1 MiB rings, 16 slots, 64 credits)',
      ),
    );
  }
  if (f.rawPing) {
    rows.push(pingRow('native rdma connection ping-pong (no gateway/SDK)', f.rawPing, b, 'round trip of 64 B over a bare native connection, echoed by JS on a socketpair on a'));
  }
  if (f.rawError) {
    rows.push({ name: 'native rdma connection (no gateway/SDK)', transport: 'rdma', size_bytes: BW_SIZE, throughput_MBps: null, p50_us: null, p99_us: null, error: f.rawError });
  }
  // Rows with CQ polling on are rows of their own (the lab's default, 0, keeps the plain names).
  return rows.map((r) => (POLL_US ? { ...r, name: `${r.name} (poll ${POLL_US} us)`, rdma_poll_us: POLL_US } : { ...r, rdma_poll_us: 0 }));
}
