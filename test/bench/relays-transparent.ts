/**
 * The `relays` family's transparent-mode rows (issue 15's goal: transparent
 * ≥ 0.95× the same path through a `-L` forward). One network namespace
 * (test/clients/proxy/netns.ts) with one `sockgate proxy` child that has both
 * `--transparent` and a `-L` forward to the same iperf3 server on this side of
 * the veth; iperf3 runs inside the namespace, to the server's address
 * (redirected by nftables to the proxy) and to the `-L` port, alternating, so
 * both paths share the proxy, the gateway and the plane. Median of ctx.reps
 * runs each; the transparent row carries `ratio_vs_L`. Needs root and nft
 * (skipped with the reason otherwise).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { netnsSkipReason, startLab } from '../clients/proxy/netns.js';
import { run } from '../clients/proxy/helpers.js';
import { median, round, type BenchContext, type BenchRow } from './lib.js';

/** The -L forward's port inside the namespace. */
const L_PORT = 15900;
/** How long one iperf3 run may take beyond its own duration. */
const TOOL_GRACE_MS = 20_000;
/** The goal of issue 15: transparent throughput at least this fraction of -L's. */
export const TRANSPARENT_GOAL = 0.95;

async function freePortOn(host: string): Promise<number> {
  const s = createServer();
  s.listen(0, host);
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export async function transparentRows(ctx: BenchContext, secs: number): Promise<BenchRow[]> {
  const skip = netnsSkipReason();
  if (skip) {
    ctx.log(`  transparent: skipped: ${skip}`);
    return [];
  }
  // The lab's addresses are known only once it exists; the -L target is set by a second proxy start below.
  let lab = await startLab(7, []);
  const host = lab.host4;
  await lab.destroy();
  const iperfPort = await freePortOn('0.0.0.0');
  lab = await startLab(7, [{ name: 'bench', action: 'allow', directions: ['connect'], destinations: ['10.213.0.0/16'] }], ['-L', `127.0.0.1:${L_PORT}=tcp://${host}:${iperfPort}`]);
  const server = spawn('iperf3', ['-s', '-B', host, '-p', String(iperfPort)], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 300));
    lab.rules(['--to', `${host}/32`, '--ports', String(iperfPort), '--install']);
    const rows: BenchRow[] = [];
    for (const reverse of [false, true]) {
      const g: Record<'transparent' | 'L', number[]> = { transparent: [], L: [] };
      const errors: string[] = [];
      for (let i = 0; i < ctx.reps; i++) {
        for (const which of ['transparent', 'L'] as const) {
          const target = which === 'transparent' ? ['-c', host, '-p', String(iperfPort)] : ['-c', '127.0.0.1', '-p', String(L_PORT)];
          const argv = lab.exec('iperf3', [...target, '-t', String(secs), '-J', ...(reverse ? ['-R'] : [])]);
          const r = await run(argv[0]!, argv.slice(1), { timeoutMs: secs * 1000 + TOOL_GRACE_MS });
          try {
            const bps = (JSON.parse(r.stdout.toString()) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second;
            g[which].push(bps / 1e9);
          } catch {
            errors.push(`${which}: ${r.stderr || r.stdout.toString().slice(0, 200)}`);
          }
        }
      }
      const name = reverse ? 'iperf3-down' : 'iperf3-up';
      if (errors.length) ctx.log(`  transparent ${name}: ${errors.length} run(s) failed: ${errors.join('; ')}`);
      const mt = g.transparent.length ? median(g.transparent) : null;
      const ml = g.L.length ? median(g.L) : null;
      const ratio = mt !== null && ml ? round(mt / ml, 2) : null;
      ctx.log(`  transparent ${name}: ${mt?.toFixed(2) ?? 'failed'} Gbit/s vs -L in the same netns ${ml?.toFixed(2) ?? 'failed'} Gbit/s = ${ratio ?? '?'}x (goal >= ${TRANSPARENT_GOAL})`);
      const row = (transport: string, v: number | null, extra: Record<string, unknown>): BenchRow => ({
        name,
        transport,
        size_bytes: 0,
        throughput_MBps: v === null ? null : round((v * 1e9) / 8 / 1e6),
        p50_us: null,
        p99_us: null,
        gbit_s: v === null ? null : round(v, 2),
        family: 'relays',
        stat: `median of ${ctx.reps}`,
        ...extra,
      });
      rows.push(row('proxy-L-netns', ml, {}), row('transparent', mt, { ratio_vs_L: ratio, goal_ratio_vs_L: TRANSPARENT_GOAL }));
    }
    return rows;
  } finally {
    server.kill('SIGKILL');
    await lab.destroy();
  }
}
