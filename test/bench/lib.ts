/**
 * Benchmark plumbing shared by every family: the row and family types, timing,
 * percentiles, bounded write/read loops, loopback sink and echo servers, and the
 * child gateway (a real `sockgate serve` process, as in production).
 *
 * Everything listens on 127.0.0.1 with a kernel-chosen port, and every loop is
 * bounded both in count and in time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';

/** How long a child gateway may take to start listening. */
const GATEWAY_START_TIMEOUT_MS = 20_000;
/** How long a child gateway may take to exit after SIGTERM before it is killed (it must exit itself to write a --cpu-prof). */
const GATEWAY_STOP_TIMEOUT_MS = 10_000;
/** How long a probe waits for the control port's HTTP/2 SETTINGS frame. */
const PROBE_TIMEOUT_MS = 1_000;
/** Default bound on waiting for a peer to receive what was sent. */
const DEFAULT_WAIT_MS = 30_000;
/** Check the clock once every this many writes in a write loop (a clock read per 64 B write would be measurable). */
const CLOCK_EVERY_WRITES = 16;

export const CLI_PATH = fileURLToPath(new URL('../../server/cli/index.js', import.meta.url));
const RELAY_PATH = fileURLToPath(new URL('./node-relay.js', import.meta.url));

// ---------------------------------------------------------------------------
// Rows and families

/** One line of results.json. Nulls where a measure does not apply. */
export interface BenchRow {
  /** What was measured, e.g. "stream" (one-way throughput) or "pingpong" (latency). */
  name: string;
  /** The path the bytes took: "direct" (no gateway, the baseline), "tcp", "grpc", later "shm", ... */
  transport: string;
  /** Write size (stream) or message size (pingpong) in bytes. */
  size_bytes: number;
  /** Throughput in 10^6 bytes per second, or null. */
  throughput_MBps: number | null;
  p50_us: number | null;
  p99_us: number | null;
  /** Extra per-row fields are allowed (family, repeats, bytes, ratio_vs_direct, ...). */
  [extra: string]: unknown;
}

/** What a family gets from the runner. */
export interface BenchContext {
  /** --quick: fewer repeats, shorter runs; the whole run must stay under 60 s. */
  readonly quick: boolean;
  /** Repeats per point (the reported value is the median of these). */
  readonly reps: number;
  /** --sizes: only these write sizes, for families that have sizes; undefined means all. */
  readonly sizes: readonly number[] | undefined;
  /** Include reference rows that are not sockgate (e.g. a plain Node relay); off with --no-ref. */
  readonly reference: boolean;
  /** Where child gateways write --cpu-prof profiles; undefined unless profiling. */
  readonly profileDir: string | undefined;
  /** Progress output (stderr), so the table on stdout stays clean. */
  log(msg: string): void;
  /** Start a child gateway that the runner stops at the end even if the family throws. */
  startGateway(opts?: ChildGatewayOptions): Promise<ChildGateway>;
}

/**
 * A benchmark family: a named function returning rows. Register one in
 * families.ts; the runner runs them in order, in one process, and computes
 * ratios against the `direct` row with the same name and size.
 */
export interface BenchFamily {
  /** Short kebab-case name, used by `--only`. */
  readonly name: string;
  /** One line for `--help` and the metadata file. */
  readonly description: string;
  /** Skip the family (with this reason) when its prerequisites are missing, e.g. no native addon. */
  skip?(): string | undefined | Promise<string | undefined>;
  run(ctx: BenchContext): Promise<BenchRow[]>;
  /** Targets to check after the run (e.g. an issue's acceptance numbers). */
  readonly goals?: readonly BenchGoal[];
}

/** "The row (name, transport, size) reaches at least `minRatio` of the direct row's throughput." */
export interface BenchGoal {
  readonly name: string;
  readonly transport: string;
  readonly size_bytes: number;
  readonly minRatio: number;
  /** Where the goal comes from, e.g. "issue 2". */
  readonly source: string;
}

// ---------------------------------------------------------------------------
// Statistics

/** Nearest-rank percentile of already sorted samples (p in 0..100). */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Bytes over milliseconds as 10^6 bytes per second. */
export function mbps(bytes: number, ms: number): number {
  return ms > 0 ? bytes / 1e3 / ms : NaN;
}

export function round(n: number | null, digits = 1): number | null {
  return n === null || !Number.isFinite(n) ? null : roundTo(n, digits);
}
/** `n` rounded to `digits` decimals, NaN as it is (figures computed further, e.g. the VM benchmarks'). */
export const roundTo = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;

/** Reject after `ms` with a message naming what did not finish. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    }),
  ]);
}

// ---------------------------------------------------------------------------
// CPU accounting (Linux /proc): who was busy during a timed run

/** Clock ticks per second of /proc times (USER_HZ; 100 on every mainstream Linux build). */
const USER_HZ = 100;

export interface CpuSnapshot {
  wallMs: number;
  /** This process: user + system µs. */
  selfUs: number;
  /** Another process (a child gateway): user + system ms, or NaN if unreadable. */
  otherMs: number;
  /** Machine-wide ticks: busy (everything but idle and iowait), steal, and total. */
  busyTicks: number;
  stealTicks: number;
  totalTicks: number;
}

function procCpuMs(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at ") ".
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    return ((Number(f[11]) + Number(f[12])) * 1000) / USER_HZ;
  } catch {
    return NaN;
  }
}

function machineTicks(): { busy: number; steal: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const steal = v[7] ?? 0;
    return { busy: total - idle - steal, steal, total };
  } catch {
    return { busy: NaN, steal: NaN, total: NaN };
  }
}

/** Snapshot CPU use of this process, of `otherPid` (optional) and of the machine. */
export function cpuSnapshot(otherPid?: number): CpuSnapshot {
  const u = process.cpuUsage();
  const m = machineTicks();
  return { wallMs: performance.now(), selfUs: u.user + u.system, otherMs: procCpuMs(otherPid), busyTicks: m.busy, stealTicks: m.steal, totalTicks: m.total };
}

export interface CpuUse {
  /** CPU of this (bench) process as % of one core. */
  bench_cpu_pct: number | null;
  /** CPU of the process in the middle (gateway or reference relay) as % of one core. */
  relay_cpu_pct: number | null;
  /** Whole machine busy time as % of all cores (includes other tenants). */
  machine_busy_pct: number | null;
  /** Time stolen by the hypervisor as % of all cores. */
  steal_pct: number | null;
  /** Busy time of everything else on the machine (other tenants, kernel threads) as % of all cores. */
  other_load_pct: number | null;
}

export function cpuUse(a: CpuSnapshot, b: CpuSnapshot): CpuUse {
  const wall = b.wallMs - a.wallMs;
  const ticks = b.totalTicks - a.totalTicks;
  const pct = (x: number, of: number) => (Number.isFinite(x) && of > 0 ? round((100 * x) / of, 1) : null);
  const bench = pct((b.selfUs - a.selfUs) / 1000, wall);
  const relay = pct(b.otherMs - a.otherMs, wall);
  const machine = pct(b.busyTicks - a.busyTicks, ticks);
  const ncpu = cpus().length;
  const other = machine === null ? null : Math.max(0, Math.round(machine - ((bench ?? 0) + (relay ?? 0)) / ncpu));
  return { bench_cpu_pct: bench, relay_cpu_pct: relay, machine_busy_pct: machine, steal_pct: pct(b.stealTicks - a.stealTicks, ticks), other_load_pct: other };
}

// ---------------------------------------------------------------------------
// Client loops (the same code for every row)

/**
 * Write `chunk` repeatedly until `maxBytes` are written or `deadline`
 * (performance.now() ms) passes, awaiting 'drain' whenever write() returns false.
 * Resolves with the bytes written.
 */
export async function writeLoop(sock: Duplex, chunk: Buffer, maxBytes: number, deadline: number): Promise<number> {
  let written = 0;
  let n = 0;
  while (written + chunk.length <= maxBytes) {
    if (sock.destroyed) throw sock.errored ?? new Error('socket destroyed during the write loop');
    written += chunk.length;
    if (!sock.write(chunk)) {
      await drainOrClose(sock);
      if (performance.now() >= deadline) break;
    } else if (++n % CLOCK_EVERY_WRITES === 0 && performance.now() >= deadline) {
      break;
    }
  }
  return written;
}

function drainOrClose(sock: Duplex): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      sock.removeListener('drain', onDrain);
      sock.removeListener('close', onClose);
      sock.removeListener('error', done);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(sock.errored ?? new Error('socket closed while waiting for drain'));
    sock.once('drain', onDrain);
    sock.once('close', onClose);
    sock.once('error', done);
  });
}

/**
 * Ping-pong: send `message`, wait until as many bytes came back, repeat.
 * Returns round-trip times in µs of the `count` timed trips after `warmup`
 * untimed ones; stops early (fewer samples) at `deadline`.
 */
export function pingPong(sock: Duplex, message: Buffer, warmup: number, count: number, deadline: number): Promise<Float64Array> {
  return new Promise((resolve, reject) => {
    const samples = new Float64Array(count);
    let taken = 0;
    let warm = 0;
    let got = 0;
    let t0 = 0;
    const finish = (err?: Error) => {
      sock.removeListener('data', onData);
      sock.removeListener('error', finish);
      sock.removeListener('close', onClose);
      if (err) reject(err);
      else resolve(samples.subarray(0, taken));
    };
    const onClose = () => finish(new Error(`socket closed during ping-pong after ${taken} samples`));
    const send = () => {
      t0 = performance.now();
      sock.write(message);
    };
    const onData = (c: Buffer) => {
      got += c.length;
      if (got < message.length) return;
      if (got > message.length) return finish(new Error(`ping-pong: ${got} bytes back for a ${message.length}-byte message`));
      const t1 = performance.now();
      got = 0;
      if (warm < warmup) warm++;
      else samples[taken++] = (t1 - t0) * 1000;
      if (taken >= count || t1 >= deadline) return finish();
      send();
    };
    sock.on('data', onData);
    sock.once('error', finish);
    sock.once('close', onClose);
    send();
  });
}

// ---------------------------------------------------------------------------
// Loopback servers (in the bench process)

export interface SinkPeer {
  /** Bytes received on this connection so far. */
  readonly received: number;
  /** Resolves when `received >= bytes`; rejects on close or after `ms`. */
  waitFor(bytes: number, ms?: number): Promise<void>;
}

export interface LoopbackServer {
  readonly port: number;
  readonly uri: string;
  /** The server side of the connection whose remote port is `port` (the client's local port). */
  peer(port: number, ms?: number): Promise<SinkPeer>;
  close(): Promise<void>;
}

class Peer implements SinkPeer {
  received = 0;
  private want = Infinity;
  private wake: (() => void) | undefined;
  private failed: Error | undefined;

  constructor(sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.received += c.length;
      if (this.received >= this.want) this.wake?.();
    });
    sock.on('close', () => {
      this.failed = new Error(`sink connection closed after ${this.received} bytes`);
      this.wake?.();
    });
  }

  waitFor(bytes: number, ms = DEFAULT_WAIT_MS): Promise<void> {
    if (this.received >= bytes) return Promise.resolve();
    return within(
      new Promise<void>((resolve, reject) => {
        this.want = bytes;
        this.wake = () => {
          this.want = Infinity;
          this.wake = undefined;
          if (this.received >= bytes) resolve();
          else reject(this.failed ?? new Error('sink woken early'));
        };
        if (this.failed) this.wake();
      }),
      ms,
      `sink to receive ${bytes} bytes (has ${this.received})`,
    ).finally(() => {
      this.want = Infinity;
      this.wake = undefined;
    });
  }
}

async function loopbackServer(onConn: (c: Socket) => SinkPeer | undefined): Promise<LoopbackServer> {
  const sockets = new Set<Socket>();
  const peers = new Map<number, SinkPeer>();
  const waiters = new Map<number, (p: SinkPeer) => void>();
  const server: Server = createServer({ allowHalfOpen: false, noDelay: true } as Parameters<typeof createServer>[0], (c) => {
    sockets.add(c);
    c.setNoDelay(true);
    c.on('error', () => {});
    const port = c.remotePort ?? 0;
    c.on('close', () => {
      sockets.delete(c);
      peers.delete(port);
    });
    const p = onConn(c) ?? new Peer(c);
    peers.set(port, p);
    waiters.get(port)?.(p);
    waiters.delete(port);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    uri: `tcp://127.0.0.1:${port}`,
    peer(remotePort: number, ms = 10_000) {
      const p = peers.get(remotePort);
      if (p) return Promise.resolve(p);
      return within(new Promise<SinkPeer>((resolve) => waiters.set(remotePort, resolve)), ms, `connection from port ${remotePort}`);
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A server that reads and counts (the throughput sink). */
export function sinkServer(): Promise<LoopbackServer> {
  return loopbackServer((c) => new Peer(c));
}

/** A server that writes back every chunk it reads (ping-pong peer). */
export function echoServer(): Promise<LoopbackServer> {
  return loopbackServer((c) => {
    c.on('data', (d: Buffer) => c.write(d));
    return undefined;
  });
}

/** A plain TCP connection to 127.0.0.1:port with Nagle off (the baseline's client). */
export async function dialDirect(port: number): Promise<Socket> {
  const s = netConnect({ host: '127.0.0.1', port, noDelay: true });
  await within(once(s, 'connect'), 10_000, `connect to 127.0.0.1:${port}`);
  return s;
}

/** Close a client socket gracefully, bounded; destroy it if it does not close in time. */
export async function closeSocket(sock: Duplex, ms = 5_000): Promise<void> {
  if (sock.destroyed) return;
  const closed = once(sock, 'close').catch(() => {});
  sock.end();
  sock.resume();
  try {
    await within(closed, ms, 'socket close');
  } catch {
    sock.destroy();
  }
}

// ---------------------------------------------------------------------------
// The child gateway

export interface ChildGatewayOptions {
  /** Label for logs and profile file names. */
  label?: string;
  /** YAML appended to the bench config (later keys win). */
  extraYaml?: string;
  /** Extra node flags (the runner adds --cpu-prof when profiling). */
  nodeFlags?: string[];
  /** Raise the child's soft descriptor limit to this first (`sh -c 'ulimit -n N; exec node ...'`), for capacity runs. */
  fdLimit?: number;
}

export interface ChildGateway {
  readonly label: string;
  readonly pid: number;
  /** gRPC control target, host:port. */
  readonly target: string;
  /** ms from spawn until it served (the start-up a profile summary skips). */
  readonly startupMs: number;
  /** Everything the child wrote to stdout and stderr. */
  logs(): string;
  /** SIGTERM, wait for a clean exit (so a --cpu-prof is written), SIGKILL after a bound. Idempotent. */
  stop(): Promise<void>;
}

/**
 * The gateway's config for benches: the embedded default with every port 0
 * (kernel-chosen) and warn-level logs, so logging is not part of what is measured.
 */
export const BENCH_CONFIG_YAML = `listen: { control: "127.0.0.1:0", data: "127.0.0.1:0", metrics: "127.0.0.1:0" }
telemetry: { log_level: warn, traces: none }
shutdown: { drain_timeout_ms: 2000 }
`;

/** Children not yet stopped; killed on exit whatever happens. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });
}

/** Kill every child gateway at once (the runner's last resort on a signal or watchdog). */
export function killAllChildren(): void {
  for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** Socket inodes of process `pid` by fd (Linux /proc); cheap to poll. */
function socketInodes(pid: number): Map<string, number> {
  const inodeFd = new Map<string, number>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodeFd;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodeFd.set(m[1]!, Number(fd));
    } catch {
      // the fd closed meanwhile
    }
  }
  return inodeFd;
}

/**
 * Listening TCP ports among `inodeFd` (from socketInodes), in fd order. Reads
 * /proc/<pid>/net/tcp{,6}, which lists the whole network namespace and can take
 * tens of ms on a busy host: call it only when the process's sockets changed.
 */
export function listeningPorts(pid: number, inodeFd = socketInodes(pid)): number[] {
  const found: { fd: number; port: number }[] = [];
  if (inodeFd.size === 0) return [];
  for (const file of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      // c[1] local address:port (hex), c[3] state (0A = LISTEN), c[9] inode
      if (c.length < 10 || c[3] !== '0A') continue;
      const fd = inodeFd.get(c[9]!);
      if (fd !== undefined) found.push({ fd, port: parseInt(c[1]!.split(':').pop()!, 16) });
    }
  }
  return found.sort((a, b) => a.fd - b.fd).map((f) => f.port);
}

/** Whether 127.0.0.1:port speaks first with an HTTP/2 SETTINGS frame (a gRPC server does; the data and metrics ports wait). */
export function isHttp2Server(port: number, ms = PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port });
    const done = (v: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(false), ms);
    s.once('data', (d: Buffer) => done(d.length >= 4 && d[3] === 0x04));
    s.once('error', () => done(false));
    s.once('close', () => done(false));
  });
}

/**
 * Start `node dist/server/cli/index.js serve --config <tmp>` with BENCH_CONFIG_YAML.
 * With warn-level logs the child does not print its addresses, so the control
 * port is found from the child's listening sockets (/proc) and the one that
 * greets with HTTP/2; the SDK learns the data port from negotiation.
 */
export async function startChildGateway(opts: ChildGatewayOptions = {}): Promise<ChildGateway> {
  installExitHook();
  const label = opts.label ?? 'gateway';
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-bench-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, BENCH_CONFIG_YAML + (opts.extraYaml ?? ''));
  const argv = [...(opts.nodeFlags ?? []), CLI_PATH, 'serve', '--config', file];
  const child = opts.fdLimit
    ? spawn('sh', ['-c', `ulimit -n ${Math.floor(opts.fdLimit)} && exec "$0" "$@"`, process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TRACE: '' } })
    : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TRACE: '' } });
  liveChildren.add(child);
  let logs = '';
  const onLog = (chunk: string) => {
    // Bounded: keep the last 64 KiB.
    logs = (logs + chunk).slice(-65536);
  };
  child.stdout!.setEncoding('utf8').on('data', onLog);
  child.stderr!.setEncoding('utf8').on('data', onLog);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => {
    liveChildren.delete(child);
    rmSync(dir, { recursive: true, force: true });
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      try {
        await within(exited, GATEWAY_STOP_TIMEOUT_MS, `${label} exit after SIGTERM`);
      } catch {
        child.kill('SIGKILL');
        await within(exited, 5_000, `${label} exit after SIGKILL`).catch(() => {});
      }
    })();
    return stopping;
  };

  const spawnedAt = performance.now();
  const ready = (target: string): ChildGateway => ({ label, pid: child.pid!, target, startupMs: Math.round(performance.now() - spawnedAt), logs: () => logs, stop });
  try {
    const deadline = Date.now() + GATEWAY_START_TIMEOUT_MS;
    const pid = child.pid;
    if (pid === undefined) throw new Error(`${label}: spawn failed`);
    let seen = '';
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${label} exited (${child.exitCode ?? child.signalCode}) during start: ${logs}`);
      const logged = /"control":"([^"]+)"/.exec(logs);
      if (logged) return ready(logged[1]!);
      const inodes = socketInodes(pid);
      const key = [...inodes.keys()].sort().join(',');
      if (key !== seen) {
        seen = key;
        for (const port of listeningPorts(pid, inodes)) {
          if (await isHttp2Server(port)) return ready(`127.0.0.1:${port}`);
        }
        // A listener may exist before it answers: look again next time even if nothing changed.
        if (inodes.size >= 3) seen = '';
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${label} did not start listening within ${GATEWAY_START_TIMEOUT_MS} ms: ${logs}`);
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Make (and return) a fresh directory for CPU profiles. */
export function makeProfileDir(base = tmpdir()): string {
  const dir = join(base, `sockgate-bench-prof-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

// ---------------------------------------------------------------------------
// Reference relays (node-relay.ts in a child process)

export interface RelayChild {
  readonly mode: 'pipe' | 'onread';
  readonly pid: number;
  /** The relay's listening port for destination port `dest`. */
  portFor(dest: number): number;
  /** The port the destination sees for the relayed connection from client port `client`. */
  upstreamFor(client: number, ms?: number): Promise<number>;
  stop(): Promise<void>;
}

/** Start a reference relay forwarding to each of `destPorts` on 127.0.0.1. */
export async function startRelay(mode: 'pipe' | 'onread', destPorts: readonly number[]): Promise<RelayChild> {
  installExitHook();
  const child = spawn(process.execPath, [RELAY_PATH, mode, ...destPorts.map(String)], { stdio: ['pipe', 'pipe', 'pipe'] });
  liveChildren.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => liveChildren.delete(child));
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr = (stderr + c).slice(-8192)));
  child.stdin!.on('error', () => {});
  const upstream = new Map<number, number>();
  const waiters = new Map<number, (p: number) => void>();
  let listen: Record<string, number> | undefined;
  let onListen: (() => void) | undefined;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let msg: { listen?: Record<string, number>; client?: number; upstream?: number };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return;
    }
    if (msg.listen) {
      listen = msg.listen;
      onListen?.();
    } else if (msg.client !== undefined && msg.upstream !== undefined) {
      upstream.set(msg.client, msg.upstream);
      waiters.get(msg.client)?.(msg.upstream);
      waiters.delete(msg.client);
    }
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.stdin!.end();
    child.kill('SIGTERM');
    await within(exited, 5_000, `relay ${mode} exit`).catch(() => {
      child.kill('SIGKILL');
    });
  };
  try {
    await within(
      new Promise<void>((resolve, reject) => {
        onListen = resolve;
        child.once('exit', (code) => reject(new Error(`relay ${mode} exited (${code}): ${stderr}`)));
      }),
      10_000,
      `relay ${mode} to listen`,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const ports = listen!;
  return {
    mode,
    pid: child.pid!,
    portFor(dest) {
      const p = ports[String(dest)];
      if (p === undefined) throw new Error(`relay ${mode} does not forward to port ${dest}`);
      return p;
    },
    upstreamFor(client, ms = 10_000) {
      const u = upstream.get(client);
      if (u !== undefined) return Promise.resolve(u);
      return within(new Promise<number>((resolve) => waiters.set(client, resolve)), ms, `relay ${mode} upstream of client port ${client}`);
    },
    stop,
  };
}
