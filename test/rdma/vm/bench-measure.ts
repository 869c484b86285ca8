/**
 * What a VM benchmark measures besides time (test/rdma/vm/bench-gateway.ts,
 * bench-peer.ts): CPU of this process, its threads and the machine, context
 * switches, interrupts and eth0 packets, perf records, and the rdma events
 * that reach JS. Generic figures (percentiles, rounding, timeouts) come from
 * test/bench/lib.ts, the one benchmark library.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { roundTo } from '../../bench/lib.js';

// ---- CPU accounting ----------------------------------------------------------------

/** The aggregate `cpu` line of /proc/stat (USER_HZ ticks) and this process's CPU time. */
export interface CpuMark {
  stat: number[];
  proc: NodeJS.CpuUsage;
  /** This process's threads: tid -> [comm, utime + stime ticks]. */
  threads: Map<number, [string, number]>;
  /** Machine-wide: context switches, interrupts (/proc/stat), eth0 packets (rxe and TCP both ride it). */
  ctxt: number;
  intr: number;
  txPackets: number;
  rxPackets: number;
  t: number;
}

function netStat(name: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/eth0/statistics/${name}`, 'utf8'));
  } catch {
    return 0;
  }
}

function threadTicks(): Map<number, [string, number]> {
  const out = new Map<number, [string, number]>();
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      const st = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const close = st.lastIndexOf(')');
      const comm = st.slice(st.indexOf('(') + 1, close);
      const f = st.slice(close + 2).split(' ');
      // fields after the comm: state(3) ... utime(14) stime(15), 1-based in proc(5)
      out.set(Number(tid), [comm, Number(f[11]) + Number(f[12])]);
    }
  } catch {
    // not Linux
  }
  return out;
}

export function cpuMark(): CpuMark {
  let stat: number[] = [];
  let ctxt = 0;
  let intr = 0;
  try {
    const lines = readFileSync('/proc/stat', 'utf8').split('\n');
    stat = (lines[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    for (const l of lines) {
      if (l.startsWith('ctxt ')) ctxt = Number(l.slice(5));
      else if (l.startsWith('intr ')) intr = Number(l.split(' ')[1]);
    }
  } catch {
    // not Linux: no machine-wide figures
  }
  return { stat, proc: process.cpuUsage(), threads: threadTicks(), ctxt, intr, txPackets: netStat('tx_packets'), rxPackets: netStat('rx_packets'), t: performance.now() };
}

/** Shares of the machine's CPU time over [a, b] (all vCPUs), and this process's CPU seconds. */
export interface CpuSpan {
  seconds: number;
  /** user+nice, system, softirq+irq (rxe and virtio-net run there), idle+iowait, steal: fractions of all vCPU time. */
  user: number;
  system: number;
  softirq: number;
  idle: number;
  steal: number;
  /** This process (JS, native I/O thread, libuv): CPU seconds. */
  proc_user_s: number;
  proc_sys_s: number;
  /** The process's busiest threads: "comm/tid" (main = the JS thread) -> CPU seconds (USER_HZ resolution). */
  threads_s: Record<string, number>;
  /** Machine-wide counts over the span. */
  context_switches: number;
  interrupts: number;
  eth0_tx_packets: number;
  eth0_rx_packets: number;
}

export function cpuSpan(a: CpuMark, b: CpuMark): CpuSpan {
  const d = b.stat.map((v, i) => v - (a.stat[i] ?? 0));
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = d;
  const total = d.slice(0, 8).reduce((x, y) => x + y, 0) || 1;
  const f = (v: number) => roundTo(v / total, 3);
  return {
    seconds: roundTo((b.t - a.t) / 1000, 3),
    user: f(user + nice),
    system: f(system),
    softirq: f(softirq + irq),
    idle: f(idle + iowait),
    steal: f(steal),
    proc_user_s: roundTo((b.proc.user - a.proc.user) / 1e6, 3),
    proc_sys_s: roundTo((b.proc.system - a.proc.system) / 1e6, 3),
    threads_s: Object.fromEntries(
      [...b.threads]
        .map(([tid, [comm, ticks]]) => [tid === process.pid ? `${comm}/main` : `${comm}/${tid}`, (ticks - (a.threads.get(tid)?.[1] ?? 0)) / 100] as const)
        .filter(([, v]) => v >= 0.05)
        .sort((x, y) => y[1] - x[1])
        .slice(0, 6),
    ),
    context_switches: b.ctxt - a.ctxt,
    interrupts: b.intr - a.intr,
    eth0_tx_packets: b.txPackets - a.txPackets,
    eth0_rx_packets: b.rxPackets - a.rxPackets,
  };
}

/** Machine-wide counts of a span divided by `n` (round trips, iterations, MB). */
export function perUnit(c: Pick<CpuSpan, 'context_switches' | 'interrupts' | 'eth0_tx_packets' | 'eth0_rx_packets'>, n: number): Record<string, number> {
  return {
    context_switches: roundTo(c.context_switches / n, 2),
    interrupts: roundTo(c.interrupts / n, 2),
    eth0_tx_packets: roundTo(c.eth0_tx_packets / n, 2),
    eth0_rx_packets: roundTo(c.eth0_rx_packets / n, 2),
  };
}

// ---- optional system-wide profiles (debugging) -------------------------------------------

/**
 * With SOCKGATE_BENCH_PERF=1 (debugging only): `perf record -a -g` (cpu-clock,
 * 200 Hz) around a measurement; stop() writes `perf report` text to
 * $SOCKGATE_VM_OUT/<vm>-<name>.txt. A no-op otherwise.
 */
export function perfRecord(name: string): { stop(): Promise<void> } {
  const out = process.env['SOCKGATE_VM_OUT'];
  if (process.env['SOCKGATE_BENCH_PERF'] !== '1' || !out) return { stop: async () => {} };
  const data = `/tmp/perf-${name}.data`;
  const child = spawn('perf', ['record', '-a', '-g', '-F', '200', '-e', 'cpu-clock', '-o', data], { stdio: ['ignore', 'ignore', 'inherit'] });
  return {
    async stop() {
      child.kill('SIGINT');
      await once(child, 'close');
      const file = `${out}/${process.env['SOCKGATE_VM_NAME'] ?? 'vm'}-${name}.txt`;
      for (const args of [
        ['--sort', 'comm,dso', '--no-children', '-g', 'none'],
        ['--sort', 'sym', '--no-children', '-g', 'none'],
        ['--sort', 'comm,sym', '--no-children', '-g', 'caller,0.5,callee', '--percent-limit', '2'],
      ]) {
        await new Promise<void>((resolve) => {
          const r = spawn('sh', ['-c', `perf report -i ${data} --stdio ${args.join(' ')} 2>&1 | head -400 >> ${file}`], { stdio: 'ignore' });
          r.on('close', () => resolve());
        });
      }
      process.stdout.write(`bench-gateway: perf report of ${name} in ${file}\n`);
    },
  };
}

// ---- counting the rdma pump events that reach JS ---------------------------------------

/** rdma events by kind, and the JS callbacks (batches) that delivered them. */
export class EventCount {
  readonly byKind: Record<string, number> = {};
  progressBytes = 0;
  add(e: { event: string; toFd?: number; toPeer?: number }): void {
    this.byKind[e.event] = (this.byKind[e.event] ?? 0) + 1;
    if (e.event === 'progress') this.progressBytes += (e.toFd ?? 0) + (e.toPeer ?? 0);
  }
  snapshot(): Record<string, number> {
    return { ...this.byKind };
  }
}

/** Count the rdma events every PumpHub of this process routes (the gateway's and the SDK's). */
export async function countHubEvents(): Promise<EventCount> {
  const { PumpHub } = await import('../../../native/pump-hub.js');
  const count = new EventCount();
  const proto = PumpHub.prototype as unknown as { onRdma(id: number, fn: (e: { event: string }) => void): void; __counted?: boolean };
  if (!proto.__counted) {
    proto.__counted = true;
    const orig = proto.onRdma;
    proto.onRdma = function (this: unknown, id: number, fn: (e: { event: string }) => void) {
      orig.call(this, id, (e) => {
        count.add(e);
        fn(e);
      });
    };
  }
  return count;
}

export function diffCounts(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0)) out[k] = v - (a[k] ?? 0);
  return out;
}
