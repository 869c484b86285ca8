/**
 * `npm run bench [-- options]`: run every registered benchmark family (see
 * families.ts) in one process, print one table, check the goals, and write
 * test/bench/results.json (an array of rows) and test/bench/results-meta.json.
 *
 * Options:
 *   --quick          one short run per point, no reference rows (the whole run stays under 60 s)
 *   --reps N         repeats per point (default 3; 1 with --quick)
 *   --only a,b       only these families
 *   --sizes a,b      only these write sizes in bytes (families with sizes)
 *   --profile        run child gateways with --cpu-prof and summarise the profiles
 *                    (same as BENCH_PROFILE=1; BENCH_PROFILE_DIR picks the directory)
 *   BENCH_GATEWAY_FLAGS="--flag ..." adds node flags to every child gateway
 *   --ref / --no-ref include / leave out reference rows that are not sockgate
 *                    (plain Node relays); default: included, except with --quick
 *   --no-write       do not write results.json / results-meta.json
 *   --strict         exit 2 when a goal is missed
 */
import { cpus, loadavg, release, totalmem } from 'node:os';
import { readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { FAMILIES } from './families.js';
import {
  killAllChildren,
  makeProfileDir,
  median,
  round,
  startChildGateway,
  type BenchContext,
  type BenchGoal,
  type BenchRow,
  type ChildGateway,
  type ChildGatewayOptions,
} from './lib.js';
import { formatSummary, summarizeProfile } from './profile.js';
import { formatResourceTable, isResourceRow } from './resource-table.js';

/** Hard bound on a whole run; past it the children are killed and the run fails. */
const WATCHDOG_QUICK_MS = 90_000;
const WATCHDOG_FULL_MS = 15 * 60_000;
/** Where results go: the source folder test/bench/, not dist/. */
const RESULTS_DIR = fileURLToPath(new URL('../../../test/bench/', import.meta.url));

interface GoalResult extends BenchGoal {
  ratio: number | null;
  met: boolean;
}

function usage(): string {
  return [
    'usage: npm run bench [-- --quick] [--reps N] [--only family,...] [--sizes bytes,...] [--profile] [--ref|--no-ref] [--no-write] [--strict]',
    'families:',
    ...FAMILIES.map((f) => `  ${f.name.padEnd(18)} ${f.description}`),
  ].join('\n');
}

function numberList(s: string | undefined, what: string): number[] | undefined {
  if (s === undefined) return undefined;
  const out = s.split(',').map((x) => Number(x.trim()));
  if (out.some((x) => !Number.isInteger(x) || x <= 0)) throw new Error(`--${what}: expected positive integers, got ${JSON.stringify(s)}`);
  return out;
}

function humanSize(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

/** Add ratio_vs_direct (throughput) and p50_ratio_vs_direct (latency) against the `direct` row of the same name and size. */
export function addRatios(rows: BenchRow[]): void {
  for (const r of rows) {
    const base = rows.find((b) => b.transport === 'direct' && b.name === r.name && b.size_bytes === r.size_bytes);
    if (!base) continue;
    if (r.throughput_MBps !== null && base.throughput_MBps) r['ratio_vs_direct'] = round(r.throughput_MBps / base.throughput_MBps, 3);
    if (r.p50_us !== null && base.p50_us) r['p50_ratio_vs_direct'] = round(r.p50_us / base.p50_us, 2);
  }
}

export function checkGoals(rows: readonly BenchRow[], goals: readonly BenchGoal[]): GoalResult[] {
  return goals.map((g) => {
    const row = rows.find((r) => r.name === g.name && r.transport === g.transport && r.size_bytes === g.size_bytes);
    const ratio = typeof row?.['ratio_vs_direct'] === 'number' ? (row['ratio_vs_direct'] as number) : null;
    return { ...g, ratio, met: ratio !== null && ratio >= g.minRatio };
  });
}

export function formatTable(rows: readonly BenchRow[], stat: string): string {
  const header = ['name', 'transport', 'size', 'MB/s', 'vs direct', 'p50 µs', 'p99 µs'];
  const cells = rows.map((r) => {
    const ratio = r['ratio_vs_direct'];
    const latRatio = r['p50_ratio_vs_direct'];
    let vs = '';
    if (typeof ratio === 'number') vs = `${(ratio * 100).toFixed(0)}%`;
    else if (typeof latRatio === 'number') vs = `${latRatio.toFixed(2)}x lat`;
    return [
      r.name,
      r.transport,
      humanSize(r.size_bytes),
      r.throughput_MBps === null ? '-' : r.throughput_MBps.toFixed(1),
      vs || '-',
      r.p50_us === null ? '-' : r.p50_us.toFixed(1),
      r.p99_us === null ? '-' : r.p99_us.toFixed(1),
    ];
  });
  const right = new Set([2, 3, 4, 5, 6]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const fmt = (c: string[]) => c.map((x, i) => (right.has(i) ? x.padStart(widths[i]!) : x.padEnd(widths[i]!))).join('  ');
  return [`values: ${stat}; MB = 10^6 bytes; "vs direct" = throughput / direct TCP at the same size (latency rows: p50 / direct p50)`, fmt(header), fmt(widths.map((w) => '-'.repeat(w))), ...cells.map(fmt)].join('\n');
}

/** Ratios vs direct predicted from CPU cost per MB (see formatCpuTable). */
export function cpuBoundRatios(rows: readonly BenchRow[], r: BenchRow): { coreEach: number | null; pooled: number | null } {
  const num = (v: unknown) => (typeof v === 'number' && v > 0 ? v : null);
  const base = rows.find((b) => b.transport === 'direct' && b.name === r.name && b.size_bytes === r.size_bytes);
  const d = num(base?.['bench_cpu_ms_per_MB']);
  const b = num(r['bench_cpu_ms_per_MB']);
  const m = num(r['relay_cpu_ms_per_MB']);
  if (d === null || b === null) return { coreEach: null, pooled: null };
  return { coreEach: d / Math.max(b, m ?? 0), pooled: d / (b + (m ?? 0)) };
}

/** CPU cost per MB of the rows that carry it (bench process and the process in the middle). */
export function formatCpuTable(rows: readonly BenchRow[]): string | undefined {
  const withCpu = rows.filter((r) => typeof r['bench_cpu_ms_per_MB'] === 'number');
  if (!withCpu.length) return undefined;
  const f = (v: unknown) => (typeof v === 'number' ? v.toFixed(2) : '-');
  const pct = (v: unknown) => (typeof v === 'number' ? `${v}%` : '-');
  const header = ['transport', 'size', 'bench ms/MB', 'middle ms/MB', 'bench cpu', 'middle cpu', 'others', 'est. core each', 'est. pooled'];
  const cells = withCpu.map((r) => {
    const est = cpuBoundRatios(rows, r);
    const ratio = (v: number | null) => (v === null ? '-' : `${(v * 100).toFixed(0)}%`);
    return [r.transport, humanSize(r.size_bytes), f(r['bench_cpu_ms_per_MB']), f(r['relay_cpu_ms_per_MB']), pct(r['bench_cpu_pct']), pct(r['relay_cpu_pct']), pct(r['other_load_pct']), ratio(est.coreEach), ratio(est.pooled)];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const fmt = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ');
  return [
    'CPU cost of streaming (medians): ms of CPU per MB moved, by the bench process (client + server) and by the process in the middle (gateway or reference relay);',
    'cpu = % of one core during the timed runs; others = % of all cores used by other processes on the machine.',
    'est. = throughput vs direct predicted from CPU cost alone: "core each" if every process had a core to itself (the busiest process bounds),',
    '"pooled" if all processes share saturated cores (the sum bounds); a measured ratio between the two is CPU-bound.',
    fmt(header),
    fmt(widths.map((w) => '-'.repeat(w))),
    ...cells.map(fmt),
  ].join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      reps: { type: 'string' },
      only: { type: 'string' },
      sizes: { type: 'string' },
      profile: { type: 'boolean', default: false },
      'no-write': { type: 'boolean', default: false },
      ref: { type: 'boolean' },
      'no-ref': { type: 'boolean', default: false },
      strict: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(usage() + '\n');
    return 0;
  }
  const quick = values.quick ?? false;
  const reps = values.reps !== undefined ? Number(values.reps) : quick ? 1 : 3;
  const reference = values['no-ref'] ? false : (values.ref ?? !quick);
  if (!Number.isInteger(reps) || reps < 1 || reps > 20) throw new Error(`--reps: expected 1..20, got ${values.reps}`);
  const sizes = numberList(values.sizes, 'sizes');
  const only = values.only?.split(',').map((s) => s.trim());
  const unknown = only?.filter((n) => !FAMILIES.some((f) => f.name === n));
  if (unknown?.length) throw new Error(`--only: unknown famil${unknown.length > 1 ? 'ies' : 'y'} ${unknown.join(', ')}\n${usage()}`);
  const profiling = values.profile || (process.env['BENCH_PROFILE'] !== undefined && process.env['BENCH_PROFILE'] !== '' && process.env['BENCH_PROFILE'] !== '0');
  const profileDir = profiling ? (process.env['BENCH_PROFILE_DIR'] ? (mkdirSync(process.env['BENCH_PROFILE_DIR'], { recursive: true }), process.env['BENCH_PROFILE_DIR']) : makeProfileDir()) : undefined;

  // BENCH_GATEWAY_FLAGS="--max-semi-space-size=64 ...": extra node flags for child gateways (experiments).
  const gatewayFlags = (process.env['BENCH_GATEWAY_FLAGS'] ?? '').split(/\s+/).filter(Boolean);
  const watchdogMs = quick ? WATCHDOG_QUICK_MS : WATCHDOG_FULL_MS;
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: watchdog: run exceeded ${watchdogMs} ms; killing child gateways\n`);
    killAllChildren();
    process.exit(1);
  }, watchdogMs);
  watchdog.unref();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}: killing child gateways\n`);
      killAllChildren();
      process.exit(130);
    });
  }

  const started = new Date();
  const t0 = performance.now();
  const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}\n`);
  const loadBefore = loadavg();
  log(`bench: ${quick ? 'quick' : 'full'} run, ${reps} repeat(s) per point, node ${process.version}, ${cpus().length} CPUs${profileDir ? `, profiling child gateways into ${profileDir}` : ''}`);

  const rows: BenchRow[] = [];
  const goals: BenchGoal[] = [];
  /** Start-up time of each profiled child, by profile file name. */
  const startups = new Map<string, number>();
  const ran: { name: string; ms: number }[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const family of FAMILIES) {
    if (only && !only.includes(family.name)) continue;
    const reason = await family.skip?.();
    if (reason) {
      log(`bench: skip ${family.name}: ${reason}`);
      skipped.push({ name: family.name, reason });
      continue;
    }
    log(`bench: ${family.name}`);
    const children: ChildGateway[] = [];
    const ctx: BenchContext = {
      quick,
      reps,
      sizes,
      reference,
      profileDir,
      log,
      async startGateway(opts: ChildGatewayOptions = {}) {
        const label = opts.label ?? `${family.name}-gateway`;
        const nodeFlags = [...(opts.nodeFlags ?? []), ...gatewayFlags];
        if (profileDir) nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${label}.cpuprofile`);
        const gw = await startChildGateway({ ...opts, label, nodeFlags });
        children.push(gw);
        startups.set(`${label}.cpuprofile`, gw.startupMs);
        return gw;
      },
    };
    const ft = performance.now();
    try {
      rows.push(...(await family.run(ctx)));
    } finally {
      await Promise.all(children.map((c) => c.stop()));
      for (const c of children) {
        const lines = c.logs().split('\n').filter((l) => l.trim());
        if (lines.length) log(`bench: ${c.label} logged ${lines.length} line(s) at warn or above; last ones:\n    ${lines.slice(-10).join('\n    ')}`);
      }
    }
    ran.push({ name: family.name, ms: Math.round(performance.now() - ft) });
    goals.push(...(family.goals ?? []));
  }
  addRatios(rows);
  const goalResults = checkGoals(rows, goals);
  const elapsedMs = Math.round(performance.now() - t0);

  const stat = reps === 1 ? `1 run per point${quick ? ' (--quick)' : ''}` : `median of ${reps} interleaved runs per point${quick ? ' (--quick: short runs)' : ''}`;
  const out: string[] = ['', formatTable(rows.filter((r) => !isResourceRow(r)), stat), ''];
  const resources = formatResourceTable(rows);
  if (resources) out.push(resources, '');
  const cpuTable = formatCpuTable(rows);
  if (cpuTable) out.push(cpuTable, '');
  out.push(
    'topology: bench client + sink/echo servers in one process; each gateway data plane in its own `sockgate serve` child process; all on 127.0.0.1.',
    'stream = one-way client -> server throughput, timed until the server has received every byte; pingpong = 64 B round trip, one message in flight.',
    '',
  );
  const others = rows.map((r) => r['other_load_pct']).filter((x): x is number => typeof x === 'number');
  if (others.length) {
    const med = median(others);
    const max = Math.max(...others);
    out.push(`machine: other processes used ${med.toFixed(0)}% of all CPUs during the median timed run (max ${max.toFixed(0)}%)${med >= 20 ? ' -- a shared, busy machine: compare ratios, not absolute numbers' : ''}.`, '');
  }
  if (goalResults.length) {
    out.push('goals:');
    for (const g of goalResults) {
      const got = g.ratio === null ? 'no result' : `${(g.ratio * 100).toFixed(0)}%`;
      out.push(`  ${g.met ? 'MET   ' : 'MISSED'} ${g.transport} ${g.name} at ${humanSize(g.size_bytes)} >= ${(g.minRatio * 100).toFixed(0)}% of direct (${g.source}): ${got}`);
    }
    out.push('');
  }
  out.push(`bench: done in ${(elapsedMs / 1000).toFixed(1)} s`);
  process.stdout.write(out.join('\n') + '\n');

  if (profileDir) {
    for (const f of readdirSync(profileDir).filter((x) => x.endsWith('.cpuprofile')).sort()) {
      process.stdout.write('\n' + formatSummary(summarizeProfile(join(profileDir, f), 20, startups.get(f) ?? 0)) + '\n');
    }
  }

  if (!values['no-write']) {
    const meta = {
      date: started.toISOString(),
      node: process.version,
      v8: process.versions.v8,
      platform: `${process.platform} ${release()} ${process.arch}`,
      cpu_count: cpus().length,
      cpu_model: cpus()[0]?.model ?? '',
      total_mem_bytes: totalmem(),
      loadavg_before: loadBefore,
      loadavg_after: loadavg(),
      quick,
      reps,
      reference_rows: reference,
      stat,
      sizes_filter: sizes ?? null,
      families: ran,
      skipped,
      goals: goalResults,
      elapsed_ms: elapsedMs,
      profile_dir: profileDir ?? null,
      gateway_node_flags: gatewayFlags,
      topology: 'bench client and loopback sink/echo servers in one process; each gateway data plane in its own `sockgate serve` child (embedded default config, ports 0, log_level warn); all on 127.0.0.1',
      method: {
        stream: 'one-way client -> server; write loop of size-byte writes awaiting drain on backpressure; timed from the first write until the server received every byte; warm-up on the same connection before timing; repeats interleaved across transports',
        pingpong: '64 B message, one in flight, through an echo server; p50/p99 of round trips after warm-up',
      },
    };
    writeFileSync(join(RESULTS_DIR, 'results.json'), JSON.stringify(rows, null, 2) + '\n');
    writeFileSync(join(RESULTS_DIR, 'results-meta.json'), JSON.stringify(meta, null, 2) + '\n');
    log(`bench: wrote ${join(RESULTS_DIR, 'results.json')} and results-meta.json`);
  }
  clearTimeout(watchdog);
  return values.strict && goalResults.some((g) => !g.met) ? 2 : 0;
}

main().then(
  (code) => {
    killAllChildren();
    process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`bench: failed: ${(err as Error)?.stack ?? String(err)}\n`);
    killAllChildren();
    process.exit(1);
  },
);
