/**
 * The Soft-RoCE VM harness: boots throwaway qemu guests (TCG) on Debian's own
 * kernel with rdma_rxe, shares the host root read-only over 9p, runs one shell
 * command in each guest from the host's tree, and returns each guest's exit
 * status and console output.
 *
 * Topologies (see README.md):
 *   one VM   — eth0 = 10.99.0.1/24 on a qemu hub with nothing else on it, rxe0 on eth0;
 *   two VMs  — a: 10.99.0.1/24, b: 10.99.0.2/24, their virtio NICs joined by a
 *              qemu stream netdev over a Unix socket (a listens, b connects; see
 *              RunOptions.link for the 127.0.0.1 TCP/UDP alternatives), rxe0 on each.
 * The 10.99.0.0/24 addresses exist only inside the guests: the host sees nothing
 * but a socket between two qemu processes.
 *
 * The guest side is init.sh (the initramfs /init); prepare.sh builds the kernel
 * and initramfs cache. This module owns the qemu processes and the per-run
 * control directory (a temp dir shared into the guest as 9p tag "ctl").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The repository root, from dist/test/rdma/vm/ (compiled) or test/rdma/vm/ (never run from source). */
export const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
/** Shell scripts are read from the source tree: tsc does not copy them into dist. */
const VM_SRC_DIR = join(REPO_ROOT, 'test', 'rdma', 'vm');

/** The qemu binary (prepare.sh checks the same name). */
const QEMU = process.env['SOCKGATE_VM_QEMU'] || 'qemu-system-x86_64';
/** Default hard limit on one run (all VMs), boot included; TCG is slow and the machine shared. */
export const DEFAULT_TIMEOUT_MS = 15 * 60_000;
/** Guest memory: node plus ava workers fit comfortably; the host has 24 GiB. */
const DEFAULT_MEM_MIB = 2048;
/** After one VM fails, how long the other may go on before it is killed (its peer is gone). */
const PEER_FAILURE_GRACE_MS = 60_000;
/**
 * eth0 MTU in the guests. 9000 lets rxe use its largest path MTU (4096): a quarter
 * of the packets of MTU 1500 (rxe 1024), and every rxe packet costs a software
 * ICRC under TCG. Override with SOCKGATE_VM_MTU.
 */
const DEFAULT_MTU = Number(process.env['SOCKGATE_VM_MTU'] || 9000);
/** How long a guest may take to power off after printing its exit line. */
const POWEROFF_GRACE_MS = 15_000;
/** How long to wait for VM a's qemu to listen on the link port before starting b. */
const LINK_LISTEN_TIMEOUT_MS = 30_000;
/** Console lines kept per VM for the caller (the rest is printed and dropped). */
const MAX_KEPT_LINES = 50_000;

/** Exit code: the run was stopped by its hard timeout (as timeout(1)). */
export const EXIT_TIMEOUT = 124;
/** Exit code: the guest never ran the command (boot, module or mount failure, qemu crash). */
export const EXIT_HARNESS = 125;

const EXIT_RE = /^SOCKGATE_VM_EXIT=(\d+)$/;
const READY_RE = /^SOCKGATE_VM_READY /;

export const SUBNET_PREFIX = '10.99.0.';
export const ADDR_A = `${SUBNET_PREFIX}1`;
export const ADDR_B = `${SUBNET_PREFIX}2`;

/** One guest of a run. */
export interface VmSpec {
  /** Short name, used as the console prefix and the hostname (sockgate-<name>). */
  name: string;
  /** Shell command run by /bin/sh in the guest, in `cwd`, chrooted into the host root. */
  command: string;
  /** Guest address of eth0 (no prefix length; /24 is added). */
  addr: string;
  /** The other VM's address, when there is one: the guest waits until it answers ping. */
  peerAddr?: string;
  /** Virtual CPUs (TCG threads). */
  smp?: number;
  memMiB?: number;
  /** Extra environment for the command. */
  env?: Record<string, string>;
}

export interface RunOptions {
  /** Hard limit for the whole run; every qemu is killed at this point. */
  timeoutMs?: number;
  /** Guest working directory (a host path, seen through the read-only share). Default: the repo root. */
  cwd?: string;
  /** A host directory that receives what the guests wrote to $SOCKGATE_VM_OUT (one subdir per VM). */
  outDir?: string;
  /** Show the kernel's console messages (otherwise only errors). */
  verbose?: boolean;
  /** Where console lines go, already prefixed. Default: process.stdout. */
  print?: (line: string) => void;
  /** Keep the control directory (for debugging). */
  keepCtl?: boolean;
  /**
   * How qemu joins two VMs' NICs on the host:
   *  'unix' (default) — a Unix stream socket in the control directory (qemu's
   *         stream netdev): reliable, flow-controlled, no Nagle, no network at all;
   *  'tcp'  — qemu's socket netdev, listen/connect on 127.0.0.1: qemu does not set
   *         TCP_NODELAY, so Nagle holds back-to-back small frames until the
   *         host's delayed ACK, and rxe round trips grow to ~25 ms;
   *  'udp'  — qemu's socket netdev, one datagram per frame on 127.0.0.1: low
   *         latency, but the host drops frames when a TCG guest falls behind
   *         (UdpRcvbufErrors) and rxe retransmits.
   * Default from SOCKGATE_VM_LINK.
   */
  link?: 'unix' | 'tcp' | 'udp';
  /** eth0 MTU in the guests (default DEFAULT_MTU). */
  mtu?: number;
  /** Extra guest kernel command line arguments (e.g. init_on_alloc=0). */
  kernelArgs?: readonly string[];
}

export interface VmResult {
  name: string;
  /** The guest command's status; EXIT_TIMEOUT or EXIT_HARNESS when it has none. */
  exitCode: number;
  /** Why the VM ended. */
  outcome: 'exited' | 'timeout' | 'no-exit-line' | 'killed-after-peer-failure';
  /** Milliseconds from qemu start to the guest's READY line (null: never ready). */
  readyMs: number | null;
  /** Milliseconds from qemu start to qemu's exit. */
  totalMs: number;
  /** Console lines (without prefix), the last MAX_KEPT_LINES. */
  lines: string[];
}

export type Prepared =
  | { kind: 'ready'; kernel: string; initrd: string; kver: string; cacheEnv: string }
  | { kind: 'skip'; reason: string };

/**
 * Runs prepare.sh (idempotent; downloads and builds only on the first call for a
 * kernel version). Resolves to 'skip' with the reason when the host lacks a
 * prerequisite; prepare.sh itself fails instead of skipping under CI.
 */
export async function prepare(print: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<Prepared> {
  const child = spawn('sh', [join(VM_SRC_DIR, 'prepare.sh')], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  const rlOut = createInterface({ input: child.stdout! });
  rlOut.on('line', (l) => out.push(l));
  const rlErr = createInterface({ input: child.stderr! });
  rlErr.on('line', (l) => print(l));
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
  if (code === 3) {
    const skip = out.find((l) => l.startsWith('SKIP:'));
    return { kind: 'skip', reason: skip ? skip.slice(5).trim() : out.join(' ') };
  }
  if (code !== 0) {
    for (const l of out) print(l);
    throw new Error(`prepare.sh failed with exit code ${code}`);
  }
  const kv = new Map<string, string>();
  for (const l of out) {
    const m = /^([A-Z]+)=(.*)$/.exec(l);
    if (m) kv.set(m[1]!, m[2]!);
  }
  const kernel = kv.get('KERNEL');
  const initrd = kv.get('INITRD');
  if (!kernel || !initrd || !existsSync(kernel) || !existsSync(initrd)) throw new Error(`prepare.sh printed no usable KERNEL/INITRD: ${out.join(' | ')}`);
  return { kind: 'ready', kernel, initrd, kver: kv.get('KVER') ?? '?', cacheEnv: out.join('\n') };
}

/** One VM running `command`; eth0 on a hub with nothing else, rxe0 on it (topology a). */
export function oneVm(command: string, extra: Partial<VmSpec> = {}): VmSpec[] {
  return [{ name: 'a', command, addr: ADDR_A, smp: 2, ...extra }];
}

/** Two VMs joined by a qemu socket link (topology b): a = 10.99.0.1, b = 10.99.0.2. */
export function twoVms(commandA: string, commandB: string, extra: Partial<VmSpec> = {}): VmSpec[] {
  return [
    { name: 'a', command: commandA, addr: ADDR_A, peerAddr: ADDR_B, smp: 1, ...extra },
    { name: 'b', command: commandB, addr: ADDR_B, peerAddr: ADDR_A, smp: 1, ...extra },
  ];
}

/** Single-quotes a string for /bin/sh. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The exit code of a run: the first VM that failed by itself (not killed because its peer failed), else the first failing, else 0. */
export function combinedExitCode(results: readonly VmResult[]): number {
  const bad = results.find((r) => r.exitCode !== 0 && r.outcome !== 'killed-after-peer-failure') ?? results.find((r) => r.exitCode !== 0);
  return bad ? bad.exitCode : 0;
}

/** Host environment variables passed into the guest command. */
function passthroughEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (k === 'PATH' || k === 'CI' || k === 'LANG' || k === 'TZ' || k === 'NODE_OPTIONS' || (k.startsWith('SOCKGATE_') && !k.startsWith('SOCKGATE_VM_'))) env[k] = v;
  }
  return env;
}

async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** True when something listens on 127.0.0.1:port (read from /proc, so qemu's listener is not consumed by a probe). */
function isListening(port: number): boolean {
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  try {
    return readFileSync('/proc/net/tcp', 'utf8')
      .split('\n')
      .some((l) => {
        const f = l.trim().split(/\s+/);
        return f[1] === want && f[3] === '0A';
      });
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Running {
  spec: VmSpec;
  child: ChildProcess;
  result: VmResult;
  done: Promise<void>;
  /** Set once the exit line was seen: the value reported by the guest. */
  reported: number | null;
}

/**
 * Boots the VMs, runs each one's command, and resolves when all have ended (or
 * the hard timeout killed them). Never rejects for a guest failure: look at
 * each result's exitCode and outcome.
 */
export async function runVms(prepared: Extract<Prepared, { kind: 'ready' }>, specs: readonly VmSpec[], opts: RunOptions = {}): Promise<VmResult[]> {
  if (specs.length < 1 || specs.length > 2) throw new Error('runVms: one or two VMs');
  const print = opts.print ?? ((l: string) => process.stdout.write(l + '\n'));
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const cwd = opts.cwd ?? REPO_ROOT;
  const ctlRoot = mkdtempSync(join(tmpdir(), 'sockgate-vm-'));
  const envLink = process.env['SOCKGATE_VM_LINK'];
  const link = opts.link ?? (envLink === 'tcp' || envLink === 'udp' ? envLink : 'unix');
  const port = specs.length === 2 && link !== 'unix' ? await freeLoopbackPort() : 0;
  const port2 = specs.length === 2 && link === 'udp' ? await freeLoopbackPort() : 0;
  const linkSock = join(ctlRoot, 'link.sock');
  const started = Date.now();
  const running: Running[] = [];
  let deadlineHit = false;

  const killAll = (signal: NodeJS.Signals) => {
    for (const r of running) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill(signal);
  };
  const onSignal = () => {
    print('vm: interrupted, killing the VMs');
    killAll('SIGKILL');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const deadline = setTimeout(() => {
    deadlineHit = true;
    print(`vm: hard timeout after ${Math.round(timeoutMs / 1000)} s, killing qemu`);
    killAll('SIGKILL');
  }, timeoutMs);

  try {
    for (const [i, spec] of specs.entries()) {
      const ctl = join(ctlRoot, spec.name);
      mkdirSync(join(ctl, 'out'), { recursive: true });
      writeFileSync(
        join(ctl, 'vm.env'),
        [
          `SOCKGATE_VM_NAME=${shQuote(spec.name)}`,
          `SOCKGATE_VM_IP=${shQuote(spec.addr + '/24')}`,
          `SOCKGATE_VM_PEER=${shQuote(spec.peerAddr ?? '')}`,
          'SOCKGATE_VM_RXE=1',
          `SOCKGATE_VM_MTU=${shQuote(String(opts.mtu ?? DEFAULT_MTU))}`,
          '',
        ].join('\n'),
      );
      const env: Record<string, string> = {
        ...passthroughEnv(),
        HOME: '/tmp/home',
        TERM: 'dumb',
        SOCKGATE_IN_VM: '1',
        SOCKGATE_VM_NAME: spec.name,
        SOCKGATE_VM_COUNT: String(specs.length),
        SOCKGATE_VM_ADDR: spec.addr,
        SOCKGATE_VM_PEER_ADDR: spec.peerAddr ?? '',
        SOCKGATE_VM_RDMA_DEV: 'rxe0',
        SOCKGATE_VM_KERNEL: prepared.kver,
        SOCKGATE_VM_SMP: String(spec.smp ?? 1),
        SOCKGATE_VM_LINK: specs.length === 2 ? link : 'none',
        SOCKGATE_VM_MTU: String(opts.mtu ?? DEFAULT_MTU),
        SOCKGATE_VM_OUT: `/run/sockgate/ctl/out`,
        ...(spec.env ?? {}),
      };
      writeFileSync(
        join(ctl, 'cmd.sh'),
        [
          '# written by test/rdma/vm/vm.ts; run by init.sh in the guest, chrooted into the host root',
          ...Object.entries(env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
          'mkdir -p "$HOME"',
          // The guest's /tmp is its own tmpfs: a working directory under the host's /tmp is bound back in.
          ...(cwd.startsWith('/tmp/') ? [`mkdir -p ${shQuote(cwd)} && mount -o bind,ro ${shQuote(`/run/host-tmp/${cwd.slice('/tmp/'.length)}`)} ${shQuote(cwd)} || exit 126`] : []),
          `cd ${shQuote(cwd)} || exit 126`,
          spec.command,
          '',
        ].join('\n'),
      );

      const netdev =
        specs.length === 1
          ? 'hubport,id=n0,hubid=0'
          : link === 'unix'
            ? `stream,id=n0,server=${i === 0 ? 'on' : 'off'},addr.type=unix,addr.path=${linkSock}`
            : link === 'udp'
              ? `socket,id=n0,localaddr=127.0.0.1:${i === 0 ? port : port2},udp=127.0.0.1:${i === 0 ? port2 : port}`
              : i === 0
              ? `socket,id=n0,listen=127.0.0.1:${port}`
              : `socket,id=n0,connect=127.0.0.1:${port}`;
      const append = ['console=ttyS0', 'panic=-1', 'rdinit=/init', opts.verbose ? 'loglevel=7 sockgate.trace' : 'quiet', ...(opts.kernelArgs ?? [])].join(' ');
      const args = [
        '-accel', 'tcg,thread=multi',
        '-cpu', 'max',
        '-machine', 'pc',
        '-m', String(spec.memMiB ?? DEFAULT_MEM_MIB),
        '-smp', String(spec.smp ?? 1),
        '-nodefaults', '-no-user-config', '-no-reboot',
        '-display', 'none', '-monitor', 'none', '-serial', 'stdio',
        '-kernel', prepared.kernel,
        '-initrd', prepared.initrd,
        '-append', append,
        '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
        '-virtfs', `local,path=${ctl},mount_tag=ctl,security_model=none,multidevs=remap`,
        '-netdev', netdev,
        '-device', `virtio-net-pci,netdev=n0,mac=52:54:00:99:00:0${i + 1}`,
      ];

      if (i === 1 && link !== 'udp') {
        // b connects to a's listening socket: wait until qemu a listens (without connecting to it).
        const listening = () => (link === 'unix' ? existsSync(linkSock) : isListening(port));
        const until = Date.now() + LINK_LISTEN_TIMEOUT_MS;
        while (!listening() && Date.now() < until && running[0]!.child.exitCode === null) await sleep(50);
        if (!listening()) print(`vm: qemu a is not listening on ${link === 'unix' ? linkSock : `127.0.0.1:${port}`}; starting b anyway`);
      }
      running.push(startOne(spec, args, started, print));
    }

    // When one VM fails, the other's peer is gone: let it finish for a while, then kill it.
    for (const r of running) {
      void r.done.then(() => {
        if (r.result.exitCode === 0) return;
        for (const other of running) {
          if (other === r) continue;
          const t = setTimeout(() => {
            if (other.child.exitCode === null && other.child.signalCode === null) {
              print(`vm: ${r.spec.name} failed; killing ${other.spec.name} after ${PEER_FAILURE_GRACE_MS / 1000} s`);
              other.result.outcome = 'killed-after-peer-failure';
              other.child.kill('SIGKILL');
            }
          }, PEER_FAILURE_GRACE_MS);
          void other.done.then(() => clearTimeout(t));
        }
      });
    }
    await Promise.all(running.map((r) => r.done));
  } finally {
    clearTimeout(deadline);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    killAll('SIGKILL');
    if (opts.outDir) {
      for (const spec of specs) {
        const src = join(ctlRoot, spec.name, 'out');
        if (existsSync(src)) cpSync(src, join(opts.outDir, spec.name), { recursive: true });
      }
    }
    if (!opts.keepCtl) rmSync(ctlRoot, { recursive: true, force: true });
    else print(`vm: control directory kept at ${ctlRoot}`);
  }

  for (const r of running) {
    if (r.reported !== null) continue;
    if (deadlineHit) {
      r.result.outcome = 'timeout';
      r.result.exitCode = EXIT_TIMEOUT;
    } else if (r.result.outcome === 'killed-after-peer-failure') {
      r.result.exitCode = EXIT_HARNESS;
    } else {
      r.result.outcome = 'no-exit-line';
      r.result.exitCode = EXIT_HARNESS;
    }
  }
  return running.map((r) => r.result);
}

function startOne(spec: VmSpec, args: string[], started: number, print: (line: string) => void): Running {
  const prefix = `[${spec.name}] `;
  const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const result: VmResult = { name: spec.name, exitCode: EXIT_HARNESS, outcome: 'no-exit-line', readyMs: null, totalMs: 0, lines: [] };
  const r: Running = { spec, child, result, done: Promise.resolve(), reported: null };
  let poweroffTimer: NodeJS.Timeout | undefined;

  const onLine = (raw: string) => {
    // Serial console lines end in \r\n; drop the \r and any terminal escapes the guest printed.
    const line = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    result.lines.push(line);
    if (result.lines.length > MAX_KEPT_LINES) result.lines.shift();
    print(prefix + line);
    if (result.readyMs === null && READY_RE.test(line)) result.readyMs = Date.now() - started;
    const m = EXIT_RE.exec(line);
    if (m) {
      r.reported = Number(m[1]);
      result.exitCode = r.reported;
      result.outcome = 'exited';
      poweroffTimer ??= setTimeout(() => child.kill('SIGKILL'), POWEROFF_GRACE_MS);
    }
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', (l) => {
    // The one-VM topology's hub has nothing else on it, on purpose.
    if (!/warning: hub \d+ is not connected to host network/.test(l)) print(`${prefix}qemu: ${l}`);
  });
  r.done = new Promise<void>((resolve) => {
    child.on('error', (err) => {
      print(`${prefix}cannot start qemu: ${err.message}`);
    });
    child.on('close', (code, signal) => {
      clearTimeout(poweroffTimer);
      result.totalMs = Date.now() - started;
      if (r.reported === null) print(`${prefix}qemu ended (${signal ?? `exit ${code}`}) without the guest reporting an exit status`);
      resolve();
    });
  });
  return r;
}
