/**
 * The transparent-mode tests' lab: a client network namespace joined to this
 * one by a veth pair (IPv4 and IPv6), a gateway in this process listening on a
 * Unix socket (Unix sockets are not netns-scoped, and shm attaches over one
 * too), and `sockgate proxy --transparent` as a child inside the namespace.
 * Destinations listen on this side's veth address; the client namespace's
 * traffic to them is redirected by `sockgate proxy rules --install` run in it.
 * Everything is removed by `destroy()` (namespace deletion takes the veth and
 * the nft table with it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemTool } from '../../../clients/proxy/rules-cli.js';
import { CLI_PATH, startGateway, type TestGateway } from '../../helpers/harness.js';

/** Bound on each `ip`/`nft`/CLI invocation of the setup. */
const SETUP_TIMEOUT_MS = 20_000;
/** veth MTU (the largest veth takes; see startLab). */
const VETH_MTU = 65535;

/** Why these tests cannot run here ('' if they can): root, nft and ip are needed. */
export function netnsSkipReason(): string {
  if (process.getuid?.() !== 0) return 'transparent-mode tests need root (network namespaces, nftables)';
  if (!systemTool('ip')) return 'transparent-mode tests need ip (apt-get install -y iproute2)';
  if (!systemTool('nft')) return 'transparent-mode tests need nft (apt-get install -y nftables)';
  if (spawnSync('sh', ['-c', 'command -v curl']).status !== 0) return 'transparent-mode tests need curl (apt-get install -y curl)';
  const probe = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (probe.status !== 0) return `ip netns does not work here: ${probe.stderr.trim()}`;
  return '';
}

export function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: SETUP_TIMEOUT_MS, input: input ?? '' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
  return r.stdout;
}

export interface NetnsLab {
  ns: string;
  /** This side's veth addresses (where destinations listen) and the namespace's. */
  host4: string;
  client4: string;
  host6: string;
  client6: string;
  gw: TestGateway;
  proxyPort: number;
  proxy: ChildProcess;
  proxyLogs(): string;
  /** Run `sockgate proxy rules ...args` inside the namespace. */
  rules(args: string[]): string;
  /** argv prefix that runs a command inside the namespace. */
  exec(cmd: string, args: string[]): string[];
  destroy(): Promise<void>;
}

/**
 * Build the lab. `rules` are the gateway's policy rules (the lab adds none of
 * its own, so a test states exactly what is allowed). `tag` keeps names apart
 * when several test files run at once.
 */
export async function startLab(tag: number, rules: unknown[], proxyArgs: string[] = []): Promise<NetnsLab> {
  const id = `${process.pid % 10000}${tag}`;
  const ns = `sgtp${id}`;
  const vh = `sgh${id}`;
  const vc = `sgc${id}`;
  const octet = ((process.pid * 7 + tag) % 200) + 20;
  const lab = {
    ns,
    host4: `10.213.${octet}.1`,
    client4: `10.213.${octet}.2`,
    host6: `fd53:${octet.toString(16)}::1`,
    client6: `fd53:${octet.toString(16)}::2`,
  };
  const cleanups: (() => Promise<void> | void)[] = [];
  let destroyed: Promise<void> | undefined;
  // Idempotent: a test may end its lab early and the after hook ends it again.
  const destroy = () =>
    (destroyed ??= (async () => {
      for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
    })());
  try {
    sh('ip', ['netns', 'add', ns]);
    cleanups.push(() => {
      spawnSync('ip', ['netns', 'del', ns]);
      spawnSync('ip', ['link', 'del', vh]);
    });
    sh('ip', ['link', 'add', vh, 'type', 'veth', 'peer', 'name', vc, 'netns', ns]);
    sh('ip', ['addr', 'add', `${lab.host4}/24`, 'dev', vh]);
    sh('ip', ['-6', 'addr', 'add', `${lab.host6}/64`, 'dev', vh, 'nodad']);
    // The veth's MTU is what a redirected connection's MSS is chosen by (its route before the
    // redirect), though its packets then run on lo: as large as lo's, so -L and redirect compare alike.
    sh('ip', ['link', 'set', vh, 'mtu', String(VETH_MTU)]);
    sh('ip', ['-n', ns, 'link', 'set', vc, 'mtu', String(VETH_MTU)]);
    sh('ip', ['link', 'set', vh, 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `${lab.client4}/24`, 'dev', vc]);
    sh('ip', ['-n', ns, '-6', 'addr', 'add', `${lab.client6}/64`, 'dev', vc, 'nodad']);
    sh('ip', ['-n', ns, 'link', 'set', vc, 'up']);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-tp-'));
    const gw = await startGateway({ listen: { control: `unix:${join(dir, 'control.sock')}` }, rules });
    cleanups.push(() => gw.stop());
    const proxyPort = 15000 + (octet % 100);
    const exec = (cmd: string, args: string[]) => ['ip', 'netns', 'exec', ns, cmd, ...args];
    const argv = exec(process.execPath, [CLI_PATH, 'proxy', '--gateway', gw.target, '--transparent', `[::]:${proxyPort}`, '--log-level', 'warn', ...proxyArgs]);
    const proxy = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(async () => {
      if (proxy.exitCode === null) {
        proxy.kill('SIGKILL');
        await new Promise((r) => proxy.once('exit', r));
      }
    });
    let logs = '';
    proxy.stdout!.setEncoding('utf8').on('data', (c: string) => (logs += c));
    proxy.stderr!.setEncoding('utf8').on('data', (c: string) => (logs += c));
    const deadline = Date.now() + SETUP_TIMEOUT_MS;
    while (!logs.includes('"event":"ready"')) {
      if (proxy.exitCode !== null || Date.now() > deadline) throw new Error(`transparent proxy did not start: ${logs}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return {
      ...lab,
      gw,
      proxyPort,
      proxy,
      proxyLogs: () => logs,
      exec,
      rules: (args) => {
        const a = exec(process.execPath, [CLI_PATH, 'proxy', 'rules', '--proxy-port', String(proxyPort), ...args]);
        return sh(a[0]!, a.slice(1));
      },
      destroy,
    };
  } catch (err) {
    await destroy();
    throw err;
  }
}
