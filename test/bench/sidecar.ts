/**
 * The sidecar family: 64 B ping-pong latency through the load-balancer
 * sidecar against a plain Node TCP relay, in the same run (issue 4's goal:
 * the sidecar's added latency at most 1.2× the plain relay's).
 *
 * Paths, all to one echo server in the bench process, one message in flight:
 * - `direct`: client -> echo (the baseline that "added latency" is measured from);
 * - `relay-pipe`: client -> plain Node relay (node-relay.ts: a `net` server
 *   doing `a.pipe(b); b.pipe(a)`, in its own process) -> echo;
 * - `sidecar-tcp`: client -> sidecar (`sockgate sidecar`, its own process) ->
 *   gateway tcp data plane (`sockgate serve`, its own process) -> echo;
 * - `gateway-tcp`: client -> SDK (in the bench process) -> gateway -> echo, the
 *   gateway hop alone, so the sidecar's own share can be told apart.
 *
 * Repeats are interleaved across paths (direct, relay, sidecar, gateway,
 * direct, ...) so a slow moment of the shared machine hits every path alike.
 * Each row carries `added_p50_us` (p50 minus direct's p50) and the sidecar row
 * `added_ratio_vs_relay` (its added p50 over the relay's) with `goal_met`.
 *
 * Run alone: `npx tsc -p . && node dist/test/bench/run.js --only sidecar`.
 * This file is also the sidecar child's entry point (`... sidecar.js sidecar-child --config f`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { registerSidecarCommand } from '../../clients/sidecar/cli.js';
import { createTelemetry } from '../../server/telemetry.js';
import {
  closeSocket,
  dialDirect,
  echoServer,
  median,
  percentile,
  pingPong,
  round,
  startChildGateway,
  startRelay,
  within,
  type BenchContext,
  type ChildGateway,
  type BenchFamily,
  type BenchRow,
  type LoopbackServer,
  type RelayChild,
} from './lib.js';

/** Message size of the ping-pong (the goal is stated at 64 B). */
const PINGPONG_BYTES = 64;
/** The goal: sidecar added p50 latency / plain relay added p50 latency at most this (issue 4). */
const GOAL_MAX_ADDED_RATIO = 1.2;
/** How long the sidecar child may take to start (it waits for the gateway and a health-check-free warm-up). */
const SIDECAR_START_TIMEOUT_MS = 20_000;
/** How long the sidecar child may take to exit after SIGTERM. */
const SIDECAR_STOP_TIMEOUT_MS = 10_000;

interface Timing {
  pingWarmup: number;
  pingCount: number;
  pingMaxMs: number;
}

const FULL: Timing = { pingWarmup: 500, pingCount: 5_000, pingMaxMs: 15_000 };
const QUICK: Timing = { pingWarmup: 200, pingCount: 2_000, pingMaxMs: 5_000 };

const SELF = fileURLToPath(import.meta.url);

/** One way to reach the echo server. */
interface Path {
  transport: string;
  dial(): Promise<Duplex>;
}

interface SidecarChild {
  pid: number;
  port: number;
  logs(): string;
  stop(): Promise<void>;
}

/** Children to kill if the bench process exits without stopping them. */
const live = new Set<ChildProcess>();
let exitHook = false;

/** Start `sockgate sidecar` (this file in child mode) with one listener over the echo server, through `target`. */
async function startSidecarChild(target: string, echo: LoopbackServer, profileDir: string | undefined): Promise<SidecarChild> {
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    });
  }
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-bench-sidecar-'));
  const file = join(dir, 'sidecar.yaml');
  writeFileSync(
    file,
    [
      `gateway: { target: "${target}", transports: [tcp] }`,
      // info: only start/stop lines; nothing is logged per connection.
      'telemetry: { metrics: "127.0.0.1:0", log_level: info }',
      'shutdown: { drain_timeout_ms: 2000 }',
      'listeners:',
      '  - { name: echo, address: "127.0.0.1:0", cluster: echo }',
      'clusters:',
      `  - { name: echo, endpoints: ["${echo.uri}"], lb_policy: round_robin }`,
      '',
    ].join('\n'),
  );
  const flags = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-name=sidecar.cpuprofile'] : [];
  const child = spawn(process.execPath, [...flags, SELF, 'sidecar-child', '--config', file, '--no-watch'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TRACE: '' } });
  live.add(child);
  let logs = '';
  const onLog = (s: string) => (logs = (logs + s).slice(-65536));
  child.stdout!.setEncoding('utf8').on('data', onLog);
  child.stderr!.setEncoding('utf8').on('data', onLog);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => {
    live.delete(child);
    rmSync(dir, { recursive: true, force: true });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    await within(exited, SIDECAR_STOP_TIMEOUT_MS, 'sidecar child exit').catch(() => child.kill('SIGKILL'));
  };
  const deadline = Date.now() + SIDECAR_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const m = /"listeners":\{"echo":"127\.0\.0\.1:(\d+)"\}/.exec(logs);
    if (m && logs.includes('"msg":"sidecar started"')) return { pid: child.pid!, port: Number(m[1]), logs: () => logs, stop };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`sidecar child did not start within ${SIDECAR_START_TIMEOUT_MS} ms: ${logs}`);
}

async function pingPongRows(ctx: BenchContext, paths: readonly Path[], t: Timing): Promise<BenchRow[]> {
  const message = Buffer.alloc(PINGPONG_BYTES, 0x42);
  const socks: Duplex[] = [];
  try {
    for (const p of paths) {
      const s = await p.dial();
      s.on('error', () => {});
      socks.push(s);
    }
    const p50s = paths.map(() => [] as number[]);
    const p99s = paths.map(() => [] as number[]);
    const counts = paths.map(() => 0);
    for (let r = 0; r < ctx.reps; r++) {
      for (const [i, p] of paths.entries()) {
        const samples = await pingPong(socks[i]!, message, t.pingWarmup, t.pingCount, performance.now() + t.pingMaxMs);
        if (samples.length === 0) throw new Error(`ping-pong over ${p.transport}: no samples within ${t.pingMaxMs} ms`);
        const sorted = Float64Array.from(samples).sort();
        p50s[i]!.push(percentile(sorted, 50));
        p99s[i]!.push(percentile(sorted, 99));
        counts[i]! += sorted.length;
        ctx.log(`  sidecar pingpong ${p.transport.padEnd(12)} run ${r + 1}/${ctx.reps}: p50 ${p50s[i]!.at(-1)!.toFixed(1)} µs, p99 ${p99s[i]!.at(-1)!.toFixed(1)} µs over ${sorted.length} round trips`);
      }
    }
    return paths.map((p, i) => ({
      name: 'sidecar-pingpong',
      transport: p.transport,
      size_bytes: PINGPONG_BYTES,
      throughput_MBps: null,
      p50_us: round(median(p50s[i]!)),
      p99_us: round(median(p99s[i]!)),
      family: 'sidecar',
      stat: `median of ${ctx.reps} (each over ${t.pingCount} round trips after ${t.pingWarmup} warm-up)`,
      round_trips: counts[i],
      runs_p50_us: p50s[i]!.map((v) => round(v)),
      runs_p99_us: p99s[i]!.map((v) => round(v)),
    }));
  } finally {
    await Promise.all(socks.map((s) => closeSocket(s)));
  }
}

/** Add added-latency fields against the direct row, and the goal verdict on the sidecar row. */
export function addSidecarRatios(rows: BenchRow[]): void {
  const direct = rows.find((r) => r.transport === 'direct');
  const relay = rows.find((r) => r.transport === 'relay-pipe');
  const gateway = rows.find((r) => r.transport === 'gateway-tcp');
  if (!direct?.p50_us || direct.p99_us === null) return;
  for (const r of rows) {
    if (r === direct || r.p50_us === null || r.p99_us === null) continue;
    r['added_p50_us'] = round(r.p50_us - direct.p50_us);
    r['added_p99_us'] = round(r.p99_us - direct.p99_us);
  }
  const sidecar = rows.find((r) => r.transport === 'sidecar-tcp');
  const relayAdded = relay?.['added_p50_us'];
  if (!sidecar || typeof relayAdded !== 'number' || relayAdded <= 0) return;
  const ratio = (sidecar['added_p50_us'] as number) / relayAdded;
  sidecar['added_ratio_vs_relay'] = round(ratio, 2);
  sidecar['goal_max_added_ratio'] = GOAL_MAX_ADDED_RATIO;
  sidecar['goal_met'] = ratio <= GOAL_MAX_ADDED_RATIO;
  // The sidecar hop alone: the whole path minus the SDK -> gateway path.
  if (gateway?.p50_us) sidecar['sidecar_hop_ratio_vs_relay'] = round((sidecar.p50_us! - gateway.p50_us) / relayAdded, 2);
}

export const sidecarFamily: BenchFamily = {
  name: 'sidecar',
  description: '64 B ping-pong: client -> sidecar -> gateway tcp plane -> echo vs client -> plain Node relay -> echo (added latency, issue 4 goal <= 1.2x)',
  async run(ctx) {
    const t = ctx.quick ? QUICK : FULL;
    if (ctx.sizes && !ctx.sizes.includes(PINGPONG_BYTES)) return [];
    const echo = await echoServer();
    let relay: RelayChild | undefined;
    let sidecar: SidecarChild | undefined;
    let sdk: SdkGateway | undefined;
    try {
      const gw = await ctx.startGateway({ label: 'sidecar-gateway' });
      ctx.log(`  ${gw.label}: pid ${gw.pid}, control ${gw.target}`);
      relay = await startRelay('pipe', [echo.port]);
      sidecar = await startSidecarChild(gw.target, echo, ctx.profileDir);
      ctx.log(`  sidecar: pid ${sidecar.pid}, listener 127.0.0.1:${sidecar.port}; relay-pipe: pid ${relay.pid}`);
      sdk = await SdkGateway.connect(gw.target, { transports: ['tcp'] }, { deadlineMs: 15_000 });
      const r = relay;
      const sc = sidecar;
      const s = sdk;
      const paths: Path[] = [
        { transport: 'direct', dial: () => dialDirect(echo.port) },
        { transport: 'relay-pipe', dial: () => dialDirect(r.portFor(echo.port)) },
        { transport: 'sidecar-tcp', dial: () => dialDirect(sc.port) },
        { transport: 'gateway-tcp', dial: () => s.connect(echo.uri, { transports: ['tcp'], noDelay: true }) },
      ];
      const rows = await pingPongRows(ctx, paths, t);
      addSidecarRatios(rows);
      const row = rows.find((x) => x.transport === 'sidecar-tcp');
      if (row && typeof row['added_ratio_vs_relay'] === 'number') {
        ctx.log(
          `  sidecar: added p50 ${row['added_p50_us']} µs vs plain relay ${rows.find((x) => x.transport === 'relay-pipe')?.['added_p50_us']} µs: ` +
            `${row['added_ratio_vs_relay']}x (goal <= ${GOAL_MAX_ADDED_RATIO}x: ${row['goal_met'] ? 'MET' : 'MISSED'}); sidecar hop alone ${row['sidecar_hop_ratio_vs_relay']}x`,
        );
      }
      return rows;
    } finally {
      sdk?.close();
      await sidecar?.stop();
      await relay?.stop();
      await echo.close();
    }
  },
};

function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === SELF;
  } catch {
    return false;
  }
}

/**
 * Standalone: `node dist/test/bench/sidecar.js [--quick] [--reps N] [--profile DIR]`
 * runs this family alone and prints its rows as JSON (until it is registered
 * in families.ts, where `npm run bench` picks it up). --profile writes a
 * --cpu-prof of the sidecar child into DIR.
 */
async function standalone(args: readonly string[]): Promise<void> {
  const quick = args.includes('--quick');
  const repsAt = args.indexOf('--reps');
  const reps = repsAt >= 0 ? Number(args[repsAt + 1]) : 3;
  if (!Number.isInteger(reps) || reps < 1 || reps > 20) throw new Error('--reps: expected 1..20');
  const profAt = args.indexOf('--profile');
  const profileDir = profAt >= 0 ? args[profAt + 1] : undefined;
  const gateways: ChildGateway[] = [];
  const ctx: BenchContext = {
    quick,
    reps,
    sizes: undefined,
    reference: true,
    profileDir,
    log: (m) => process.stderr.write(m + '\n'),
    async startGateway(opts) {
      const gw = await startChildGateway(opts);
      gateways.push(gw);
      return gw;
    },
  };
  try {
    const rows = await sidecarFamily.run(ctx);
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
  } finally {
    await Promise.all(gateways.map((g) => g.stop()));
  }
}

if (isMain()) {
  if (process.argv[2] === 'sidecar-child') {
    // Child mode: `node sidecar.js sidecar-child --config <file> [--no-watch]` runs the sidecar CLI.
    const program = new Command('sockgate');
    registerSidecarCommand(program, createTelemetry);
    await program.parseAsync([process.argv[0]!, process.argv[1]!, 'sidecar', ...process.argv.slice(3)]);
  } else {
    standalone(process.argv.slice(2)).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`bench sidecar: failed: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exit(1);
      },
    );
  }
}
