/**
 * Guest side of the RDMA baselines for issue 5's benchmark, run in two VMs
 * (topology b) by suite.ts:
 *
 *   node dist/test/rdma/vm/bench-peer.js server     on a (10.99.0.1)
 *   node dist/test/rdma/vm/bench-peer.js client     on b (10.99.0.2)
 *
 * In order (CASES): perftest `ib_write_bw -R` at 64 KiB and `ib_write_lat -R` at
 * 64 B (the issue's references; they poll: perftest has no event mode for RDMA
 * WRITE), `ib_send_bw -R -e` and `ib_send_lat -R -e` (completion events, for
 * context), then TCP over the same link from node: a 64 KiB write stream into a
 * sink, and a 64 B ping-pong. A small TCP barrier on the server (PORT_CONTROL)
 * tells the client when each perftest server listens: an rdma_cm connect that
 * arrives too early is rejected and can leave perftest hanging.
 *
 * Then the gateway's own RDMA channel (bench-gateway.ts): an in-process gateway
 * on a with transports.rdma on 10.99.0.1, the SDK on b with transports ['rdma']
 * (no fallback), a 64 KiB stream into a sink and a 64 B ping-pong through an
 * echo behind it, with ratios to ib_write_bw / ib_write_lat and TCP and whether
 * the issue's goals were met; the same over a bare native connection, and the
 * stream again with 4 MiB rings.
 *
 * Then live failover (bench-failover.ts, issue 14): a 256 MiB download through
 * a gateway with transports.rdma.resume_ms, an injected QP fatal a quarter in,
 * the time from the fault to the first byte on the new path (3 runs; the
 * client in a process of its own with the addon's test build).
 * SOCKGATE_BENCH_FAILOVER=0 (both VMs) leaves it out.
 *
 * SOCKGATE_BENCH_ONLY=gateway (debugging, e.g. both roles in one VM) skips the
 * baselines and takes them from the committed test/bench/results-rdma.json.
 *
 * The client prints the rows as one line `SOCKGATE_BENCH_ROWS=<json>`; the host
 * writes them to test/bench/results-rdma.json. Latency rows give the ROUND TRIP
 * in p50_us/p99_us; perftest's *_lat report half the round trip, kept as
 * perftest_reported_*_us.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { percentile, roundTo, writeLoop, type BenchRow as Row } from '../../bench/lib.js';
import { pingPong } from './bench-gateway.js';
import { failoverRows, FAILOVER_BYTES, RUNS as FAILOVER_RUNS, startFailoverServers, type FailoverRun } from './bench-failover.js';
import { cpuMark, cpuSpan, perUnit } from './bench-measure.js';

/** Seconds of ib_write_bw (-D) and of the TCP stream: long enough to settle under TCG. */
const STREAM_SECONDS = Number(process.env['SOCKGATE_BENCH_SECONDS'] || 8);
/** ib_write_lat exchanges (-n) and TCP ping-pongs. */
const LAT_ITERS = Number(process.env['SOCKGATE_BENCH_LAT_ITERS'] || 2000);
/** TCP ping-pongs before measuring. */
const LAT_WARMUP = 100;
/** ib_send_bw -e messages (it has no -D with events here). */
const SEND_BW_ITERS = Number(process.env['SOCKGATE_BENCH_SEND_ITERS'] || 1000);
const BW_SIZE = 65536;
const LAT_SIZE = 64;
const PORT_BW = 18515;
const PORT_LAT = 18516;
const PORT_TCP_SINK = 5201;
const PORT_TCP_ECHO = 5202;
/** The server's barrier: a client names a case and gets "go" once that perftest server listens. */
const PORT_CONTROL = 5200;
/** perftest prints this once its rdma_cm listener is up. */
const LISTENING_RE = /Waiting for client rdma_cm QP to connect/;
/** If a perftest version does not print that line, consider it listening after this long. */
const LISTEN_FALLBACK_MS = 5_000;
/** Each perftest server, and the TCP server, gives up after this long without its client. */
const SERVER_TIMEOUT_MS = 240_000;
/** Client connect attempts while the server side starts (one per second). */
const CLIENT_ATTEMPTS = 90;
/** perftest client runs after the barrier said go. */
const PERFTEST_ATTEMPTS = 5;
/** A whole perftest client run may take this long. */
const CLIENT_RUN_TIMEOUT_MS = 120_000;

const DEV = process.env['SOCKGATE_VM_RDMA_DEV'] || 'rxe0';
const SERVER_ADDR = process.env['SOCKGATE_VM_PEER_ADDR'] || '10.99.0.1';
/** The server's own address (the gateway binds it). */
const OWN_ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
/** Only the gateway's figures (baselines from the committed results). */
const GATEWAY_ONLY = process.env['SOCKGATE_BENCH_ONLY'] === 'gateway';
/** Debugging with SOCKGATE_BENCH_ONLY=gateway: some of bench-gateway.ts's PHASES, comma-separated. */
const PHASES = GATEWAY_ONLY && process.env['SOCKGATE_BENCH_PHASES'] ? (process.env['SOCKGATE_BENCH_PHASES'].split(',') as import('./bench-gateway.js').Phase[]) : undefined;
/** The client's whole gateway phase (SDK load under TCG included) and the server's wait for it. */
const GATEWAY_PHASE_MS = 600_000;
/** The failover row (bench-failover.ts); SOCKGATE_BENCH_FAILOVER=0 in both VMs skips it. */
const FAILOVER = process.env['SOCKGATE_BENCH_FAILOVER'] !== '0';
/** Its client process: the expected hash, then the downloads (each bounded there too). */
const FAILOVER_PHASE_MS = 900_000;

interface Ran {
  code: number | null;
  out: string;
}

function log(msg: string): void {
  process.stdout.write(`bench-peer: ${msg}\n`);
}

/**
 * Runs a command to completion (killed after timeoutMs), echoing its output;
 * onOutput sees the output so far. Through stdbuf: perftest block-buffers a pipe,
 * and its "listening" line must arrive while it waits.
 */
function run(cmd: string, args: string[], timeoutMs: number, onOutput?: (out: string) => void): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn('stdbuf', ['-oL', '-eL', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
      onOutput?.(out);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setTimeout(() => {
      log(`${cmd} timed out after ${timeoutMs} ms; killing it`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      out += String(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Asks the server's barrier to say when the named case's perftest server listens. */
async function waitForServer(name: string): Promise<void> {
  const s = await connectRetry(PORT_CONTROL);
  s.setEncoding('utf8');
  s.write(`${name}\n`);
  let got = '';
  for await (const chunk of s) {
    got += chunk as string;
    if (got.includes('\n')) break;
  }
  s.destroy();
  if (got.trim() !== 'go') throw new Error(`server barrier answered ${JSON.stringify(got.trim())} for ${name}`);
}

/** Runs a perftest client once its server listens; retries a few times (rdma_cm can still reject a first attempt). */
async function perftestClient(name: string, cmd: string, args: string[]): Promise<string> {
  await waitForServer(name);
  for (let i = 1; i <= PERFTEST_ATTEMPTS; i++) {
    const r = await run(cmd, [...args, SERVER_ADDR], CLIENT_RUN_TIMEOUT_MS);
    if (r.code === 0) return r.out;
    // A bad option never gets better; anything else is most likely the server not listening yet.
    if (/Parser function exited with Error|Invalid|not available/i.test(r.out)) throw new Error(`${cmd} rejected its options`);
    log(`${cmd} attempt ${i} failed (exit ${r.code}); retrying in 1 s`);
    await new Promise((res) => setTimeout(res, 1000));
  }
  throw new Error(`${cmd} never completed against ${SERVER_ADDR}`);
}

/** One perftest measurement: the same arguments on both sides, the client adds the server address. */
interface PerftestCase {
  /** Row name in results-rdma.json. */
  name: string;
  cmd: string;
  kind: 'bw' | 'lat';
  args: string[];
  /** Why this case is there. */
  note: string;
}

const common = (port: number) => ['-R', '-d', DEV, '-F', '-p', String(port)];
const bwArgs = (port: number) => [...common(port), '-s', String(BW_SIZE), '-D', String(STREAM_SECONDS), '--report_gbits'];
const latArgs = (port: number) => [...common(port), '-s', String(LAT_SIZE), '-n', String(LAT_ITERS)];

const CASES: PerftestCase[] = [
  {
    name: 'perftest ib_write_bw -R',
    cmd: 'ib_write_bw',
    kind: 'bw',
    args: bwArgs(PORT_BW),
    note: 'the issue-5 reference; perftest polls its CQ (it has no event mode for RDMA WRITE), which on 1 vCPU competes with the rxe kernel work',
  },
  {
    name: 'perftest ib_write_lat -R',
    cmd: 'ib_write_lat',
    kind: 'lat',
    args: latArgs(PORT_LAT),
    note: 'the issue-5 reference; polls the written buffer. p50/p99 are round trips: twice what ib_write_lat reports (half the round trip; t_typical is its median)',
  },
  {
    name: 'perftest ib_send_bw -R -e',
    cmd: 'ib_send_bw',
    kind: 'bw',
    args: [...common(PORT_BW + 2), '-e', '-s', String(BW_SIZE), '-n', String(SEND_BW_ITERS), '--report_gbits'],
    note: 'context: SEND with completion events (-e), as an event-driven transport runs',
  },
  {
    name: 'perftest ib_send_lat -R -e',
    cmd: 'ib_send_lat',
    kind: 'lat',
    args: [...common(PORT_LAT + 2), '-e', '-s', String(LAT_SIZE), '-n', String(LAT_ITERS)],
    note: 'context: SEND ping-pong with completion events (-e). p50/p99 are round trips: twice what ib_send_lat reports',
  },
];

// ---------------------------------------------------------------------------
// server (VM a)

async function tcpServers(): Promise<void> {
  let remaining = 2;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('TCP client never came')), SERVER_TIMEOUT_MS);
    const done = () => {
      if (--remaining === 0) {
        clearTimeout(timer);
        sink.close();
        echo.close();
        resolve();
      }
    };
    const sink = createServer((s) => {
      let bytes = 0;
      s.on('data', (d: Buffer) => (bytes += d.length));
      s.on('end', () => s.end(`${bytes}\n`));
      s.on('close', done);
      s.on('error', () => {});
    });
    const echo = createServer((s) => {
      s.setNoDelay(true);
      s.pipe(s);
      s.on('close', done);
      s.on('error', () => {});
    });
    sink.listen(PORT_TCP_SINK, '0.0.0.0');
    echo.listen(PORT_TCP_ECHO, '0.0.0.0');
    sink.on('error', reject);
    echo.on('error', reject);
  });
}

/** The barrier: answers "go" to a client naming a case once that case's server listens. */
class Barrier {
  /** Case names whose server listens now. */
  private readonly ready = new Set<string>();
  /** Clients waiting for a case, by name. */
  private readonly waiting = new Map<string, Socket[]>();
  /** until() callers, by name. */
  private readonly arrivals = new Map<string, () => void>();
  private readonly server = createServer((s) => {
    s.setEncoding('utf8');
    let buf = '';
    s.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const name = buf.slice(0, nl);
      const arrived = this.arrivals.get(name);
      this.arrivals.delete(name);
      arrived?.();
      if (this.ready.has(name)) s.end('go\n');
      else this.waiting.set(name, [...(this.waiting.get(name) ?? []), s]);
    });
    s.on('error', () => {});
  });

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(PORT_CONTROL, '0.0.0.0', () => resolve());
    });
  }

  open(name: string): void {
    this.ready.add(name);
    for (const s of this.waiting.get(name) ?? []) s.end('go\n');
    this.waiting.delete(name);
  }

  /** Opens `name` and resolves when a client names it (the client's "I am done"). */
  until(name: string, ms: number): Promise<void> {
    this.open(name);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the client never said ${name}`)), ms);
      this.arrivals.set(name, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  shut(name: string): void {
    this.ready.delete(name);
  }

  close(): void {
    this.server.close();
  }
}

async function server(): Promise<void> {
  const barrier = new Barrier();
  await barrier.listen();
  for (const c of GATEWAY_ONLY ? [] : CASES) {
    log(`${c.cmd} server`);
    let fallback: NodeJS.Timeout | undefined = setTimeout(() => barrier.open(c.name), LISTEN_FALLBACK_MS);
    const r = await run(c.cmd, c.args, SERVER_TIMEOUT_MS, (out) => {
      if (fallback && LISTENING_RE.test(out)) {
        clearTimeout(fallback);
        fallback = undefined;
        barrier.open(c.name);
      }
    });
    clearTimeout(fallback);
    barrier.shut(c.name);
    if (r.code !== 0) throw new Error(`${c.cmd} server failed (exit ${r.code})`);
  }
  if (!GATEWAY_ONLY) {
    // The TCP servers listen before the barrier opens for them.
    log('TCP sink and echo servers');
    const tcp = tcpServers();
    barrier.open('tcp');
    await tcp;
  }
  // Loaded only now: node reading the gateway's modules must not compete with the baselines.
  log('sockgate gateways, their destinations and a bare rdma listener');
  const gw = await import('./bench-gateway.js');
  // (SOCKGATE_BENCH_PERF=1 profiles each destination's measured span: bench-gateway.ts perfRecord.)
  const servers = await gw.startServers(OWN_ADDR);
  barrier.open('gateway');
  try {
    await barrier.until('gateway-done', GATEWAY_PHASE_MS);
  } finally {
    await servers.close();
  }
  if (FAILOVER) {
    log('live failover: gateway with resume_ms and a source');
    const fo = await startFailoverServers(OWN_ADDR);
    barrier.open('failover');
    try {
      await barrier.until('failover-done', FAILOVER_PHASE_MS);
    } finally {
      await fo.close();
    }
  }
  barrier.close();
  log('done');
}

// ---------------------------------------------------------------------------
// client (VM b)

async function connectRetry(port: number): Promise<Socket> {
  for (let i = 1; i <= CLIENT_ATTEMPTS; i++) {
    const s = connect({ host: SERVER_ADDR, port });
    try {
      await once(s, 'connect');
      return s;
    } catch {
      s.destroy();
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
  throw new Error(`cannot connect to ${SERVER_ADDR}:${port}`);
}

async function tcpStream(): Promise<{ MBps: number; bytes: number; seconds: number }> {
  const s = await connectRetry(PORT_TCP_SINK);
  const chunk = Buffer.alloc(BW_SIZE, 0x5a);
  let reply = '';
  s.on('data', (d: Buffer) => (reply += d.toString()));
  const closed = once(s, 'close');
  const start = performance.now();
  const sent = await writeLoop(s, chunk, Number.MAX_SAFE_INTEGER, start + STREAM_SECONDS * 1000);
  s.end();
  await closed;
  const seconds = (performance.now() - start) / 1000;
  const received = Number(reply.trim());
  if (received !== sent) throw new Error(`TCP sink counted ${received} bytes, sent ${sent}`);
  return { MBps: sent / seconds / 1e6, bytes: sent, seconds };
}

async function tcpPingPong(): Promise<number[]> {
  const s = await connectRetry(PORT_TCP_ECHO);
  s.setNoDelay(true);
  const { rtts } = await pingPong(s, LAT_WARMUP, LAT_ITERS, 120_000);
  s.end();
  await once(s, 'close');
  return rtts;
}

async function runCase(c: PerftestCase): Promise<Row> {
  log(`${c.cmd} client`);
  const mark0 = cpuMark();
  const out = await perftestClient(c.name, c.cmd, c.args);
  // Machine-wide counts on the client VM over the whole perftest run (connection setup included).
  const { proc_user_s: _u, proc_sys_s: _s, threads_s: _t, ...vm } = cpuSpan(mark0, cpuMark());
  const tool = `${c.cmd} ${c.args.join(' ')} ${SERVER_ADDR}`;
  if (c.kind === 'bw') {
    // #bytes #iterations BW-peak BW-average[Gb/sec] MsgRate
    const m = new RegExp(`^\\s*${BW_SIZE}\\s+(\\d+)\\s+([\\d.]+)\\s+([\\d.]+)\\s+([\\d.]+)`, 'm').exec(out);
    if (!m) throw new Error(`cannot parse ${c.cmd} output`);
    const gbps = Number(m[3]);
    const mb = (Number(m[1]) * BW_SIZE) / 1e6;
    return {
      name: c.name,
      transport: 'rdma',
      size_bytes: BW_SIZE,
      throughput_MBps: roundTo(gbps * 125),
      p50_us: null,
      p99_us: null,
      note: c.note,
      tool,
      iterations: Number(m[1]),
      perftest_reported_avg_Gbps: gbps,
      profile: { client_vm_cpu: vm, client_vm_per_MB: perUnit(vm, mb) },
    };
  }
  // #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9% (t_stdev can print as -nan)
  const m = new RegExp(`^\\s*${LAT_SIZE}\\s+(\\d+)((?:\\s+(?:[\\d.]+|-?nan|-?inf)){7})\\s*$`, 'mi').exec(out);
  if (!m) throw new Error(`cannot parse ${c.cmd} output`);
  const [tMin, , tTypical, tAvg, , p99, p999] = m[2]!.trim().split(/\s+/).map(Number) as [number, number, number, number, number, number, number];
  return {
    name: c.name,
    transport: 'rdma',
    size_bytes: LAT_SIZE,
    throughput_MBps: null,
    p50_us: roundTo(tTypical * 2, 2),
    p99_us: roundTo(p99 * 2, 2),
    note: c.note,
    tool,
    iterations: Number(m[1]),
    perftest_reported_typical_us: tTypical,
    perftest_reported_avg_us: tAvg,
    perftest_reported_min_us: tMin,
    perftest_reported_p99_us: p99,
    perftest_reported_p99_9_us: p999,
    profile: { client_vm_cpu: vm, client_vm_per_round_trip: perUnit(vm, Number(m[1])) },
  };
}

/** ib_write_bw / ib_write_lat / TCP figures the gateway's rows are compared with. */
function baselinesOf(rows: Row[]): import('./bench-gateway.js').Baselines {
  const find = (name: string, size: number) => {
    const r = rows.find((x) => x.name === name && x.size_bytes === size);
    if (!r) throw new Error(`no baseline row ${name} at ${size} B`);
    return r;
  };
  const bw = find('perftest ib_write_bw -R', BW_SIZE);
  const lat = find('perftest ib_write_lat -R', LAT_SIZE);
  const tcpBw = find('tcp over rxe link (node)', BW_SIZE);
  const tcpLat = find('tcp over rxe link (node)', LAT_SIZE);
  const sendBw = rows.find((x) => x.name === 'perftest ib_send_bw -R -e');
  const sendLat = rows.find((x) => x.name === 'perftest ib_send_lat -R -e');
  return {
    ...(sendBw?.throughput_MBps ? { ibSendBwMBps: sendBw.throughput_MBps } : {}),
    ...(sendLat?.p50_us ? { ibSendLatP50us: sendLat.p50_us } : {}),
    ibWriteBwMBps: bw.throughput_MBps!,
    ibWriteLatP50us: lat.p50_us!,
    ibWriteLatP99us: lat.p99_us!,
    tcpMBps: tcpBw.throughput_MBps!,
    tcpP50us: tcpLat.p50_us!,
    tcpP99us: tcpLat.p99_us!,
  };
}

async function gatewayPhase(baselineRows: Row[]): Promise<Row[]> {
  await waitForServer('gateway');
  const gw = await import('./bench-gateway.js');
  let timer: NodeJS.Timeout | undefined;
  const figures = await Promise.race([
    gw.runClient({ addr: SERVER_ADDR, streamSeconds: STREAM_SECONDS, latIters: LAT_ITERS, latWarmup: LAT_WARMUP, ...(PHASES ? { phases: PHASES } : {}) }),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('the gateway phase did not finish in time')), GATEWAY_PHASE_MS))),
  ]).finally(() => clearTimeout(timer));
  await waitForServer('gateway-done');
  return gw.figuresToRows(figures, baselinesOf(baselineRows)) as Row[];
}

/** The failover row: bench-failover.js client in a process with the addon's test build (its hostile mode is the fault). */
async function failoverPhase(rows: Row[]): Promise<Row[]> {
  if (!FAILOVER) return [];
  await waitForServer('failover');
  log(`live failover: ${FAILOVER_RUNS} downloads of ${FAILOVER_BYTES >> 20} MiB per target (new rdma connection, tcp) with an injected QP fatal`);
  const script = new URL('./bench-failover.js', import.meta.url).pathname;
  const child = spawn(process.execPath, [script, 'client', SERVER_ADDR], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, SOCKGATE_NATIVE_BUILD: 'test' } });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    process.stdout.write(d);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), FAILOVER_PHASE_MS);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  await waitForServer('failover-done');
  const m = /^SOCKGATE_FAILOVER_RUNS=(\[.*\])$/m.exec(out);
  if (code !== 0 || !m) throw new Error(`bench-failover client failed (exit ${code})`);
  const noFault = rows.find((r) => r.name === 'sockgate rdma channel stream');
  return failoverRows(JSON.parse(m[1]!) as FailoverRun[], noFault?.throughput_MBps ?? undefined);
}

async function client(): Promise<void> {
  const rows: Row[] = [];
  if (GATEWAY_ONLY) {
    // Debugging: the committed baselines stand in; only the gateway's rows are printed.
    const committed = JSON.parse(readFileSync(new URL('../../../../test/bench/results-rdma.json', import.meta.url), 'utf8')) as Row[];
    const own = await gatewayPhase(committed);
    own.push(...(await failoverPhase([...committed, ...own])));
    process.stdout.write(`SOCKGATE_BENCH_ROWS=${JSON.stringify(own)}\n`);
    return;
  }
  for (const c of CASES) rows.push(await runCase(c));

  await waitForServer('tcp');
  log('TCP stream');
  let mark0 = cpuMark();
  const stream = await tcpStream();
  const streamVm = cpuSpan(mark0, cpuMark());
  log('TCP ping-pong');
  mark0 = cpuMark();
  const rtts = await tcpPingPong();
  const pingVm = cpuSpan(mark0, cpuMark());
  if (rtts.length < 10) throw new Error(`only ${rtts.length} TCP ping-pongs completed`);

  rows.push(
    {
      name: 'tcp over rxe link (node)',
      transport: 'tcp',
      size_bytes: BW_SIZE,
      throughput_MBps: roundTo(stream.MBps),
      p50_us: null,
      p99_us: null,
      note: 'node net.Socket writes of 64 KiB into a sink on the other VM, over the same virtio link as rxe0 (TCP does not use rxe)',
      bytes: stream.bytes,
      seconds: roundTo(stream.seconds, 2),
      profile: { client_vm_cpu: streamVm, client_vm_per_MB: perUnit(streamVm, stream.bytes / 1e6) },
    },
    {
      name: 'tcp over rxe link (node)',
      transport: 'tcp',
      size_bytes: LAT_SIZE,
      throughput_MBps: null,
      p50_us: roundTo(percentile(rtts, 50), 2),
      p99_us: roundTo(percentile(rtts, 99), 2),
      note: 'round trip of a 64 B message echoed by node on the other VM (TCP_NODELAY)',
      iterations: rtts.length,
      // warmup included in the counts
      profile: { client_vm_cpu: pingVm, client_vm_per_round_trip: perUnit(pingVm, rtts.length + LAT_WARMUP) },
    },
  );
  log('sockgate gateway rdma channel');
  rows.push(...(await gatewayPhase(rows)));
  rows.push(...(await failoverPhase(rows)));
  const meta = {
    topology: `two TCG VMs, ${process.env['SOCKGATE_VM_SMP'] ?? '?'} vCPU each; virtio-net joined by qemu (${process.env['SOCKGATE_VM_LINK'] ?? '?'} link), MTU ${process.env['SOCKGATE_VM_MTU'] ?? '?'}; rxe0 on each eth0`,
    kernel: process.env['SOCKGATE_VM_KERNEL'] ?? '',
    date: new Date().toISOString(),
  };
  for (const r of rows) Object.assign(r, meta);
  process.stdout.write(`SOCKGATE_BENCH_ROWS=${JSON.stringify(rows)}\n`);
}

const role = process.argv[2];
const main = role === 'server' ? server : role === 'client' ? client : null;
if (!main) {
  process.stderr.write('usage: bench-peer.js server|client\n');
  process.exit(2);
}
main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench-peer ${role}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
